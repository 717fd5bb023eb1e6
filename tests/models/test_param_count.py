import json
import subprocess
import sys

import pytest

from moe_jax.config import load_config
from moe_jax.models.param_count import count_parameters

# DeepSeek-V3, by hand (D = 7168, 61 layers, first 3 dense, 128 heads, vocab 129280):
#   attention per layer: q_a 7168*1536 = 11,010,048; q_b 1536*128*192 = 37,748,736;
#     kv_a 7168*576 = 4,128,768; kv_b 512*128*256 = 16,777,216; o 128*128*7168 = 117,440,512;
#     norms q_a 1536 + kv_a 512 = 2,048                         -> 187,107,328 x 61 = 11,413,547,008
#   layer norms 2*7168 per layer x 61 = 874,496; final norm 7,168
#   dense MLP 3*7168*18432 = 396,361,728 x 3 = 1,189,085,184
#   expert 3*7168*2048 = 44,040,192; 256 routed x 58 = 653,908,770,816; shared x 58 = 2,554,331,136
#   router 256*7168 = 1,835,008 x 58 = 106,430,464
#   embedding = head = 129280*7168 = 926,679,040
#   total = 671,026,404,352 (published: 671B)
#   activated = all but the input embedding, with 8/256 of the routed experts:
#     11,413,547,008 + 874,496 + 7,168 + 1,189,085,184 + 653,908,770,816 * 8/256
#     + 2,554,331,136 + 106,430,464 + 926,679,040 = 36,625,603,584
#   (DeepSeek's weights documentation: 36.6B activated including the 0.9B head; headline 37B)
V3_TOTAL, V3_ACTIVE = 671_026_404_352, 36_625_603_584

# DeepSeek-V2-Lite (D = 2048, 27 layers, first 1 dense, 16 heads, no q low-rank, vocab 102400):
#   attention per layer: q 2048*16*192 = 6,291,456; kv_a 2048*576 = 1,179,648;
#     kv_b 512*16*256 = 2,097,152; o 16*128*2048 = 4,194,304; kv_a norm 512 -> 13,763,072 x 27
#     = 371,602,944 (+ layer norms 2*2048*27 = 110,592 + final 2,048)
#   dense MLP 3*2048*10944 = 67,239,936
#   expert 3*2048*1408 = 8,650,752; 64 routed x 26 = 14,394,851,328; 2 shared x 26 = 449,839,104
#   router 64*2048*26 = 3,407,872; embedding = head = 102400*2048 = 209,715,200
#   total = 15,706,484,224 (published: 15.7B)
#   activated = total - embedding - 58/64 of routed = 2,451,435,008 (published: 2.4B)
V2_LITE_TOTAL, V2_LITE_ACTIVE = 15_706_484_224, 2_451_435_008


def test_deepseek_v3_counts():
    counts = count_parameters(load_config("configs/deepseek_v3.py").model)
    assert counts["total"] == V3_TOTAL
    assert counts["activated"] == V3_ACTIVE
    assert abs(counts["total"] / 671e9 - 1) < 0.005
    assert abs(counts["activated"] / 36.6e9 - 1) < 0.005  # DeepSeek's own finer figure
    assert round(counts["activated"] / 1e9) == 37  # the headline figure, to its precision
    # MTP module: one MoE layer + projection 2*7168*7168 + 3 norms (documented: 11.5B unique).
    assert counts["mtp_total"] == 187_107_328 + 2 * 7168 + 257 * 44_040_192 + 1_835_008 \
        + 2 * 7168 * 7168 + 3 * 7168
    assert abs(counts["mtp_total"] / 11.5e9 - 1) < 0.01


def test_deepseek_v2_lite_counts():
    counts = count_parameters(load_config("configs/deepseek_v2_lite.py").model)
    assert counts["total"] == V2_LITE_TOTAL
    assert counts["activated"] == V2_LITE_ACTIVE
    assert abs(counts["total"] / 15.7e9 - 1) < 0.005
    assert counts["mtp_total"] == 0


@pytest.mark.slow
def test_cli_params_json_counts_v3_from_shapes_alone():
    # Completing at all is the check that nothing is allocated: V3's weights in bfloat16
    # are 1.3 TB, 50 times this machine's memory.
    out = subprocess.run([sys.executable, "-m", "moe_jax.cli", "params", "--config",
                          "configs/deepseek_v3.py", "--json"], capture_output=True, text=True, check=True)
    counts = json.loads(out.stdout)
    assert counts["total"] == V3_TOTAL and counts["activated"] == V3_ACTIVE
    assert counts["main"]["routed_experts"]["total"] == 653_908_770_816
