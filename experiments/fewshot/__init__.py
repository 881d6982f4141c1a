"""Few-shot benchmarks: Conv-4 meta-training, evaluation and loss landscapes on real data.

Public API:
    model       init_conv4(ways, in_channels, image_size, hidden, generator, dtype) -> params,
                conv4_forward(params, x) -> logits, cross_entropy_loss(params, batch) -> [n],
                accuracy, batch_norm, HEAD_NAMES (what ANIL adapts), feature_size
    config      TrainConfig (frozen; defaults and their sources in its docstring),
                training_differences, TRAINING_FIELDS
    train       run(config, resume=False, progress=sys.stderr) -> TrainResult, NonFiniteError,
                LOG_NAME, RESULTS_NAME
    evaluate    evaluate_checkpoint(path, source=, part=, episodes=600, seed=0, inner_steps=,
                queries=) -> EvalResult, evaluate_params, confidence_interval(values)
                -> (mean, std ddof=1, 1.96 std / sqrt(n))
    landscape   LandscapeConfig, run(config) -> LandscapeResult, plot(result, path),
                normalize_filters(direction, params) (Li et al. 2018), random_direction
    checkpoint  save_checkpoint (atomic), load_checkpoint, CHECKPOINT_NAME
    common      build_algorithm, episode_metrics, as_tasks, split_episode, derived_generator,
                keep_freed_memory() (glibc allocator setting used by the command-line entry points)
    commands    register(sub): the `testbed train`, `testbed eval`, `testbed landscape` commands
    tables      the paper's tables from this project's runs (`python -m experiments.fewshot.tables`)
    toy         write_toy_folder(path, ...): a tiny learnable folder: source for tests and smoke runs

Batch norm always uses the statistics of the batch it is given (no running statistics): see
``experiments.fewshot.model``.  Nothing in ``testbed/`` imports this package.
"""

from experiments.fewshot.config import TrainConfig
from experiments.fewshot.evaluate import EvalResult, confidence_interval, evaluate_checkpoint
from experiments.fewshot.model import HEAD_NAMES, conv4_forward, cross_entropy_loss, init_conv4
from experiments.fewshot.train import NonFiniteError, TrainResult, run

__all__ = [
    "HEAD_NAMES", "EvalResult", "NonFiniteError", "TrainConfig", "TrainResult", "confidence_interval",
    "conv4_forward", "cross_entropy_loss", "evaluate_checkpoint", "init_conv4", "run",
]
