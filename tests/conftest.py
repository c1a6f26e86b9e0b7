"""Test setup: 2 fake CPU devices per process (more can deadlock on 2 cores, see shared notes)."""
import os
import sys

import jax

jax.config.update('jax_num_cpu_devices', 2)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
