"""The autoencoders: the VAE, and the MLP and convolutional autoencoders."""
from collections.abc import Sequence
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lib.errors import UserError
from lib.models.images import MLP


class VAE(nn.Module):
  """The MLP VAE of Kingma & Welling (and the Flax example): x → 500 ReLU → (mean, log-variance).

  The decoder maps a latent z → 500 ReLU → 784 Bernoulli logits. The latent is
  sampled with the reparameterization trick, z = mean + exp(logvar / 2) * eps,
  eps ~ N(0, I) from the 'sample' stream, so gradients reach the encoder
  through z. Sampling happens in evaluation too: the same image gives a
  different latent every call, as the notes say.

  Attributes:
    latents: size of the latent vector.
    hidden: units of the encoder's hidden layers; the decoder mirrors them.
    outputs: pixels per image (the decoder's logits).
  """
  latents: int = 20
  hidden: Sequence[int] = (500,)
  outputs: int = 784

  def setup(self):
    self.encoder = MLP(hidden=self.hidden, outputs=2 * self.latents)
    self.decoder = MLP(hidden=tuple(reversed(self.hidden)), outputs=self.outputs)

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean, logvar) of q(z | x), each (batch, latents)."""
    mean, logvar = jnp.split(self.encoder(x), 2, axis=-1)
    return mean, logvar

  def decode(self, z: jax.Array) -> jax.Array:
    """Bernoulli logits of p(x | z), (batch, outputs)."""
    return self.decoder(z)

  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    del train  # Same function in training and evaluation.
    mean, logvar = self.encode(x)
    eps = jax.random.normal(self.make_rng('sample'), mean.shape)
    z = mean + jnp.exp(0.5 * logvar) * eps
    return {'logits': self.decode(z), 'mean': mean, 'logvar': logvar, 'z': z}


class MLPAutoencoder(nn.Module):
  """Flatten → Dense ReLU layers → latent vector → mirrored Dense layers → sigmoid image.

  Attributes:
    latents: size of the code the image is compressed to.
    hidden: units of the encoder's hidden layers; the decoder mirrors them.
    shape: the image shape (height, width, channels) the decoder outputs.
  """
  latents: int = 32
  hidden: Sequence[int] = (512, 256)
  shape: Sequence[int] = (28, 28, 1)

  def setup(self):
    self.encoder = MLP(hidden=self.hidden, outputs=self.latents)
    self.decoder = MLP(hidden=tuple(reversed(self.hidden)), outputs=math.prod(self.shape))

  def encode(self, x: jax.Array) -> jax.Array:
    """The latent code, (batch, latents)."""
    return self.encoder(x)

  def decode(self, z: jax.Array) -> jax.Array:
    """Pixels in [0, 1], (batch, *shape)."""
    return nn.sigmoid(self.decoder(z)).reshape((z.shape[0], *self.shape))

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    return self.decode(self.encode(x))


class ConvAutoencoder(nn.Module):
  """[Conv 3x3 stride 2 → ReLU] per entry of `features` → Dense latent; the decoder mirrors it
  with transposed convolutions back to a sigmoid image.

  Attributes:
    latents: size of the code the image is compressed to.
    features: channels of each stride-2 conv block (the decoder reverses them).
    shape: the image shape (height, width, channels); height and width must be
      multiples of 2 ** len(features).
  """
  latents: int = 32
  features: Sequence[int] = (32, 64)
  shape: Sequence[int] = (28, 28, 1)

  def check(self) -> None:
    """Raises UserError for an image size the stride-2 blocks cannot halve evenly."""
    scale = 2**len(self.features)
    if self.shape[0] % scale or self.shape[1] % scale:
      raise UserError(f'conv_autoencoder halves the image {len(self.features)} times: height '
                      f'and width must be multiples of {scale}, not {tuple(self.shape[:2])}')

  def setup(self):
    scale = 2**len(self.features)
    self.encoder_convs = [nn.Conv(f, (3, 3), strides=2) for f in self.features]
    self.encoder_out = nn.Dense(self.latents)
    self.code_shape = (self.shape[0] // scale, self.shape[1] // scale, self.features[-1])
    self.decoder_in = nn.Dense(math.prod(self.code_shape))
    channels = [*reversed(self.features[:-1]), self.shape[2]]
    self.decoder_convs = [nn.ConvTranspose(f, (3, 3), strides=(2, 2)) for f in channels]

  def encode(self, x: jax.Array) -> jax.Array:
    """The latent code, (batch, latents)."""
    for conv in self.encoder_convs:
      x = nn.relu(conv(x))
    return self.encoder_out(x.reshape((x.shape[0], -1)))

  def decode(self, z: jax.Array) -> jax.Array:
    """Pixels in [0, 1], (batch, *shape)."""
    x = nn.relu(self.decoder_in(z)).reshape((z.shape[0], *self.code_shape))
    for i, conv in enumerate(self.decoder_convs):
      x = conv(x)
      x = nn.sigmoid(x) if i == len(self.decoder_convs) - 1 else nn.relu(x)
    return x

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    return self.decode(self.encode(x))
