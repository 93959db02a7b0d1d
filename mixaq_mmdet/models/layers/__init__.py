from .two_branch_block import BranchQuantizers, TwoBranchSwinBlock
from .window_policy import (WINDOW_ORDERS, WINDOW_SCORES, WindowOrders,
                            WindowPolicy, check_ratios, gather_windows,
                            group_sizes, normalize_ratios, order_windows,
                            scatter_windows, split_groups, token_scores,
                            window_scores)

__all__ = [
    'TwoBranchSwinBlock', 'BranchQuantizers',
    'WINDOW_ORDERS', 'WINDOW_SCORES', 'WindowOrders', 'WindowPolicy',
    'check_ratios', 'gather_windows', 'group_sizes', 'normalize_ratios',
    'order_windows', 'scatter_windows', 'split_groups', 'token_scores',
    'window_scores'
]
