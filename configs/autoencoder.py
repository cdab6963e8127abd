"""Autoencoders of the notes: plain (compression), denoising and inpainting, MLP or conv.

Commands (MNIST; Fashion-MNIST: --config.dataset=fashion_mnist
--config.manual_dir=../shared/data/fashion_mnist):
  python -m experiments --config=configs/autoencoder.py --workdir=runs/ae \
      --config.manual_dir=../shared/data/mnist
  Denoising: --config.corruption=noise. Inpainting: --config.corruption=mask.
  Conv encoder/decoder: --config.model=conv_autoencoder.
  Latent-size sweep (2..64, one model each, PSNR per size plotted):
  python -m experiments --config=configs/autoencoder.py:sweep --workdir=runs/ae_sweep \
      --config.manual_dir=../shared/data/mnist
Expected on MNIST (MLP, 32 latents, 20 epochs; 2-core CPU, 1.5-3 minutes each):
test_psnr 23.9 dB; denoiser 19.1 dB from a 9.2 dB noisy input; inpainting hole MSE
0.052 against 0.118 for the mean image; the sweep's PSNR 15.1 dB at 2 latents rising
to 24.8 at 64 (7 minutes). All measured values: the README results table.
Smoke test: --config=configs/autoencoder.py:tiny.
"""
import ml_collections

from configs import common

# Every variant get_config takes ('' is the config as it is).
VARIANTS = ('', 'sweep', 'tiny')


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  c = common.tfds_data(common.training('autoencoder'), 'mnist')
  c.model = 'mlp_autoencoder'  # Or 'conv_autoencoder'; layer widths are the models' defaults.
  c.model_kwargs = ml_collections.ConfigDict({'latents': 32})  # Size of the code.
  c.normalization = 'unit'  # Required: the decoder's sigmoid outputs pixels in [0, 1].
  c.optimizer = 'adam'
  c.learning_rate = 1e-3
  c.batch_size = 128
  c.num_epochs = 20
  c.log_every_steps = 468
  c.best_metric = 'val_loss'  # Mean squared error against the clean image.
  c.best_mode = 'min'

  # What the encoder sees; the target is always the clean image.
  # 'none': the image itself (compression). 'noise': Gaussian noise plus
  # salt-and-pepper, clipped to [0, 1] (denoising). 'mask': a random rectangle
  # set to 0 (inpainting). New each training pass, fixed for evaluation.
  c.corruption = 'none'
  c.noise_std = 0.4  # 'noise': standard deviation of the Gaussian noise (Keras' example: 0.4).
  c.salt_pepper = 0.1  # 'noise': fraction of pixels then set to 0 or 1 at random.
  c.mask_min = 8  # 'mask': least height and width of the rectangle, in pixels.
  c.mask_max = 14  # 'mask': greatest height and width (each drawn uniformly in between).

  # Latent sizes to train one model each (in WORKDIR/latents_N) and compare;
  # () trains model_kwargs.latents alone.
  c.latent_sweep = ()
  c.plot_examples = 10  # Test images in the input / corrupted / output figure.
  if variant == 'sweep':
    c.latent_sweep = (2, 4, 8, 16, 32, 64)
    c.num_epochs = 10
    return c
  return common.variant(c, variant)
