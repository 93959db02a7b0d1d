from .two_branch_block import QUANTIZER_POSITIONS, BranchQuantizers, TwoBranchSwinBlock
from .window_layout import WindowLayout
from .window_policy import (WINDOW_ORDERS, WINDOW_SCORES, WindowOrders, WindowPolicy, check_ratios,
                            group_sizes, normalize_ratios, order_windows, split_groups,
                            token_scores, window_scores)

__all__ = [
    'TwoBranchSwinBlock', 'BranchQuantizers', 'QUANTIZER_POSITIONS', 'WindowLayout',
    'WINDOW_ORDERS', 'WINDOW_SCORES', 'WindowOrders', 'WindowPolicy', 'check_ratios', 'group_sizes',
    'normalize_ratios', 'order_windows', 'split_groups', 'token_scores', 'window_scores'
]
