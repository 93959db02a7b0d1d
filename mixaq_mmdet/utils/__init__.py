from .config import build_runner, load_runner_config, parse_runner_args

__all__ = ['load_runner_config', 'build_runner', 'parse_runner_args']
