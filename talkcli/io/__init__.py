"""Input/output: files written atomically, audio decoding, ffmpeg video reading and writing."""
