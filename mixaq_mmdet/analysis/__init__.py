"""Analysis: BitOPs accounting, the noise of mAP differences on a val split, and
window importance (which windows a Swin stage ranks high, how well the scores
find objects, pictures of the groups)."""
from .bitops import (BitOpsReport, SpeedupStats, average_speedup, count_bitops, layer_bits,
                     quantizer_bits)
from .detector import load_detector
from .integer_codes import CodeDifference, code_differences, position_of, recorded_quantized
from .plots import plot_pareto, plot_policy_curves, plot_search
from .significance import (PairedDifference, SeededDifference, coco_map, over_seeds,
                           paired_difference)
from .window_maps import (GROUP_HIGH, GROUP_LOW, GROUP_NAMES, GROUP_PRUNED, PARTITIONS,
                          block_geometry, check_swin, draw_window_groups, roc_auc, stage_inputs,
                          stage_strides, window_group_maps, window_map_to_tokens,
                          window_object_labels)

__all__ = [
    'load_detector', 'stage_inputs', 'stage_strides', 'block_geometry', 'check_swin',
    'window_object_labels', 'roc_auc', 'window_group_maps', 'window_map_to_tokens',
    'draw_window_groups', 'PARTITIONS', 'GROUP_HIGH', 'GROUP_LOW', 'GROUP_PRUNED', 'GROUP_NAMES',
    'count_bitops', 'average_speedup', 'BitOpsReport', 'SpeedupStats', 'layer_bits',
    'quantizer_bits', 'plot_pareto', 'plot_policy_curves', 'plot_search', 'PairedDifference',
    'SeededDifference', 'coco_map', 'over_seeds', 'paired_difference', 'CodeDifference',
    'code_differences', 'position_of', 'recorded_quantized'
]
