"""Neural networks of talkcli, in pure PyTorch with state-dict keys of the official weight files.

- ``ops``: StyleGAN2 operators (upfirdn2d, fused leaky ReLU, modulated convolution).
- ``stylegan2``: the rosinality StyleGAN2 generator; ``load_generator`` reads rosinality, pSp and
  talkcli-tuned checkpoints strictly.
"""
