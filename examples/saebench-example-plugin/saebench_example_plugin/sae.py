"""The SAE itself: imported only when a suite uses `tied-relu`."""

from dataclasses import dataclass

import torch

from saebench_vision.config import SAEConfig, option
from saebench_vision.interfaces import SAE, SAEOutput


@dataclass(frozen=True)
class TiedConfig(SAEConfig):
    l1_coefficient: float = option(1.0, "weight of the L1 penalty on latents")


class TiedReLUSAE(SAE):
    name, version, Config = "tied-relu", "1", TiedConfig

    def __init__(self, d_in: int, config: TiedConfig) -> None:
        super().__init__(d_in, config)
        self.W = torch.nn.Parameter(torch.randn(d_in, self.d_sae) / d_in**0.5)
        self.b_enc = torch.nn.Parameter(torch.zeros(self.d_sae))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))

    def pre_activations(self, x):
        return (x * self.input_scale - self.b_dec) @ self.W + self.b_enc

    def encode(self, x):
        return torch.relu(self.pre_activations(x))

    def decode(self, z):
        return (z @ self.W.T + self.b_dec) / self.input_scale

    def loss(self, x, *, sparsity_scale=1.0):
        z = self.encode(x)
        x_hat = self.decode(z)
        mse = ((x_hat - x) * self.input_scale).pow(2).sum(-1).mean()
        loss = mse + sparsity_scale * self.config.l1_coefficient * z.sum(-1).mean()
        return SAEOutput(
            loss, x_hat, z, {"mse": mse.detach(), "l0": (z > 0).float().sum(-1).mean()}
        )

    def decoder_directions(self):
        return self.W.detach().T
