"""The input pipeline: one interface, two sources (arrays on the devices, or a tf.data stream).

A split that fits `config.device_data_mb` is read once from TFDS as whole
arrays in their stored dtype (MNIST: 47 MB of uint8), kept in an array cache
beside the TFDS data so that later runs load it with numpy alone (no
TensorFlow, no tf.data), and placed on every device once. Each training step
gathers its batch there: the training split is cut into config.data_shards
equal shards, each permuted anew each pass by a function of (seed, shard,
pass), and a global batch joins one slice of each shard, in shard order. The
data order is thus a function of the step and the shards: a resumed run, a run
on another number of processes with the same shards, or on other devices, sees
the same global batches.

Larger splits, and images of several sizes, stream through tf.data
(streaming.py, imported only then). Both are a `Source` (splits.py):
`ArraySource` (arrays.py) and `StreamSource` (stream_source.py); nothing
outside this package asks which one it has.

Either way the step itself turns stored examples into model inputs
(`Source.preprocess`, e.g. uint8 pixels to floats in [0, 1]) and applies the
experiment's random augmentation, in JAX: one example at a time (vmapped), with
a key from the step and the example's position in the global batch in
training, and from the example's index in evaluation, so that evaluation sees
the same augmented examples in every run. Evaluation visits every example
once; the last batch is padded and masked.
"""

from lib.input_pipeline.splits import Augment
from lib.input_pipeline.splits import Augmentation
from lib.input_pipeline.splits import augmentation
from lib.input_pipeline.splits import batch_of
from lib.input_pipeline.splits import eval_batch_program
from lib.input_pipeline.splits import eval_batches
from lib.input_pipeline.splits import EVAL_SEED
from lib.input_pipeline.splits import Example
from lib.input_pipeline.splits import first_examples
from lib.input_pipeline.splits import model_inputs
from lib.input_pipeline.splits import model_spec
from lib.input_pipeline.splits import NORMALIZATIONS
from lib.input_pipeline.splits import Feed
from lib.input_pipeline.splits import order_entropy
from lib.input_pipeline.splits import Preprocess
from lib.input_pipeline.splits import Source
from lib.input_pipeline.splits import uniform16
from lib.input_pipeline.arrays import ArraySource
from lib.input_pipeline.arrays import BLOCK_STEPS
from lib.input_pipeline.arrays import from_arrays
from lib.input_pipeline.datasets import by_shape
from lib.input_pipeline.datasets import channel_stats
from lib.input_pipeline.datasets import check_normalization
from lib.input_pipeline.datasets import chunks
from lib.input_pipeline.datasets import from_stream
from lib.input_pipeline.datasets import image_classification
from lib.input_pipeline.datasets import image_info
from lib.input_pipeline.datasets import ImageData
from lib.input_pipeline.datasets import ImageInfo
from lib.input_pipeline.datasets import normalizer

__all__ = [
    'ArraySource', 'Augment', 'Augmentation', 'augmentation', 'batch_of', 'BLOCK_STEPS', 'by_shape',
    'channel_stats', 'check_normalization', 'chunks', 'eval_batch_program', 'eval_batches',
    'EVAL_SEED', 'Example', 'Feed', 'first_examples', 'from_arrays', 'from_stream',
    'image_classification', 'image_info', 'ImageData', 'ImageInfo', 'model_inputs', 'model_spec',
    'NORMALIZATIONS', 'normalizer', 'order_entropy', 'Preprocess', 'Source', 'uniform16'
]
