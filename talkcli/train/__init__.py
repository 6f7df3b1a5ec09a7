"""Training the audio-to-latent model: dataset preparation, PCA, the trainer."""
