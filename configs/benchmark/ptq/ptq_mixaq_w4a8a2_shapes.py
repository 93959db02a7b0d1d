# MixA-Q PTQ, W4 with A8 for important windows and A2 for the rest, windows
# ranked by the 'contrast' score; low-bit ratio 0.42 on every pair, a BitOPs
# speedup of 1.35x over uniform W4A8 at 320x320. A2 is where the window policy
# matters on this benchmark (docs/benchmark_results.md, window policy; at A3 every order ties):
# tools/search_ratios.py searches per-pair ratios from this config.
_base_ = './ptq_uniform_w4a8_shapes.py'

model = dict(backbone=dict(a_bits=(8, 2), low_bit_ratios=0.42, window_score='contrast'))
