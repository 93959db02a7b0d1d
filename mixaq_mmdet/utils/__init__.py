from .config import build_runner, load_runner_config, parse_runner_args, with_test_time_aug
from .distributed import close_process_group
from .tensor_cache import TensorCache

__all__ = [
    'load_runner_config', 'build_runner', 'parse_runner_args', 'with_test_time_aug', 'TensorCache',
    'close_process_group'
]
