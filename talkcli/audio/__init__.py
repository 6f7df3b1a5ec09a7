"""Audio features aligned to video frames."""
