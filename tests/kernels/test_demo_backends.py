"""Whole-model logits of the demo model through every CPU backend against the torch reference."""
import torch

from backend.loader import from_quantized

IDS = torch.tensor([[1] + list(range(300, 340)) + [2, 3, 4]])


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits.float()


def test_demo_model_logits_agree_across_backends(demo_dir, interpreter):
    if not interpreter:
        return      # ran, and was reported, in a TRITON_INTERPRET=1 subprocess
    reference = from_quantized(demo_dir, kernel="torch", torch_dtype=torch.float32)
    expected = logits(reference)

    triton = from_quantized(demo_dir, kernel="triton", torch_dtype=torch.float32)
    assert set(triton.kernel_report.values()) == {"triton"}
    torch.testing.assert_close(logits(triton), expected, rtol=1e-3, atol=1e-3)

    # bf16 activations end to end: same predictions, and as close to the fp32 reference as the torch reference
    # in bf16 is (the two bf16 paths round at different places, so each is measured against fp32; measured
    # 1.35-1.45x on an AVX-512 CPU for this model and the one before, while a wrong kernel is off by ~10)
    int4 = from_quantized(demo_dir, kernel="cpu_int4", torch_dtype=torch.bfloat16)
    assert set(int4.kernel_report.values()) == {"cpu_int4"}
    bf16_error = (logits(from_quantized(demo_dir, kernel="torch", torch_dtype=torch.bfloat16)) - expected).abs().max()
    got = logits(int4)
    int4_error = (got - expected).abs().max()
    assert int4_error <= 2 * bf16_error, f"cpu_int4 is {int4_error:.3f} from fp32, the bf16 reference {bf16_error:.3f}"
    agree = (got.argmax(-1) == expected.argmax(-1)).float().mean()
    assert agree >= 0.9, f"top-1 agreement with the fp32 reference only {agree:.2f}"
