"""The VAE family: Gaussian-latent VAEs with ELBO training and IWAE(k) evaluation."""
