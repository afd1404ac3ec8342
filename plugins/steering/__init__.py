"""Diffusion steering with text-encoder SAEs (the paper's section 4): the steering mechanism,
attribute discovery, labellers and the CLIP validation of Table 3."""
