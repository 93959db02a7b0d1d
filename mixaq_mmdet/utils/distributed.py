"""Shutting a tool's process group down before the interpreter exits."""
import torch.distributed as dist


def close_process_group() -> None:
    """Wait for every rank, then destroy the default process group (if any).

    A gloo process group left for the interpreter's exit can abort a rank
    ("terminate called without an active exception") while its peers still
    talk to it; PyTorch asks programs to destroy their groups before exiting.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


__all__ = ['close_process_group']
