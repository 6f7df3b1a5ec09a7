"""GAN inversion: pSp encoding, optimisation projection (thesis Alg. 1 and 2), PTI."""
