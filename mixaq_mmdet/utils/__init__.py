from .config import build_runner, load_runner_config

__all__ = ['load_runner_config', 'build_runner']
