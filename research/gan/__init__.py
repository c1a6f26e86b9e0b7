"""The GAN family: DCGAN and PacGAN networks with NS, minimax, WGAN-GP and hinge losses."""
