"""The CGA head against a direct, loop-level transcription of the paper's
equations (Sec. III-C, Eq. 3-7), and the forward-only guidance."""
from __future__ import annotations

import itertools

import pytest
import torch

import omkit
from omkit import functional as OF


def transcribe_cga(F, Pt, w_pos, b_pos, w_neg, b_neg, w_out, b_out, variant, eps):
    """Scalar loops, one equation at a time; F (B,C,D,H,W), Pt (B,1,D,H,W)."""
    B, C, D, H, W = F.shape
    K = w_pos.shape[0] if w_pos is not None else w_neg.shape[0]
    voxels = list(itertools.product(range(D), range(H), range(W)))
    out = torch.zeros(B, K, D, H, W, dtype=F.dtype)
    for b in range(B):
        # CSCI: z_t[i] = sum_n F[i, n] * Pt[n]; z_n[i] = sum_n F[i, n] * Pn[n]
        z_t = [sum(float(F[b, i, d, h, w]) * float(Pt[b, 0, d, h, w]) for d, h, w in voxels) for i in range(C)]
        z_n = [sum(float(F[b, i, d, h, w]) * (1.0 - float(Pt[b, 0, d, h, w])) for d, h, w in voxels) for i in range(C)]
        norm_t = max(sum(abs(v) for v in z_t), eps)
        norm_n = max(sum(abs(v) for v in z_n), eps)
        m_t = [v / norm_t for v in z_t]
        m_n = [v / norm_n for v in z_n]
        for d, h, w in voxels:
            pt = float(Pt[b, 0, d, h, w])
            pn = 1.0 - pt
            # CompSeg: U = m (.) F; S = W U + b; S~ = Pt S_t + Pn S_n (by variant)
            s_tilde = []
            for k in range(K):
                s_t = (sum(float(w_pos[k, i]) * m_t[i] * float(F[b, i, d, h, w]) for i in range(C)) + float(b_pos[k])) if w_pos is not None else 0.0
                s_n = (sum(float(w_neg[k, i]) * m_n[i] * float(F[b, i, d, h, w]) for i in range(C)) + float(b_neg[k])) if w_neg is not None else 0.0
                s_tilde.append({"full": pt * s_t + pn * s_n, "minus": s_t + s_n, "pos": pt * s_t, "neg": pn * s_n}[variant])
            for k in range(K):
                if w_out is None:
                    out[b, k, d, h, w] = s_tilde[k]
                else:
                    out[b, k, d, h, w] = sum(float(w_out[k, j]) * s_tilde[j] for j in range(K)) + float(b_out[k])
    return out


def random_inputs(B=2, C=5, K=3, spatial=(2, 3, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    kw = dict(dtype=torch.float64, generator=g)
    F = torch.rand(B, C, *spatial, **kw)
    Pt = torch.rand(B, 1, *spatial, **kw)
    w = [torch.randn(K, C, **kw), torch.randn(K, **kw), torch.randn(K, C, **kw), torch.randn(K, **kw),
         torch.randn(K, K, **kw), torch.randn(K, **kw)]
    return F, Pt, w


@pytest.mark.parametrize("variant", OF.CGA_VARIANTS)
@pytest.mark.parametrize("final_conv", [True, False])
def test_functional_cga_equals_transcription(variant, final_conv):
    F, Pt, (wp, bp, wn, bn, wo, bo) = random_inputs()
    if not final_conv:
        wo = bo = None
    got = OF.cga(F, Pt, wp, bp, wn, bn, wo, bo, variant=variant)
    want = transcribe_cga(F, Pt, wp, bp, wn, bn, wo, bo, variant, OF.DEFAULT_EPS)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_category_importance_rows_are_l1_normalised_and_match_transcription():
    F, Pt, _ = random_inputs(B=3, C=7)
    m = OF.category_importance(F, Pt)
    assert m.shape == (3, 2, 7)
    torch.testing.assert_close(m.abs().sum(-1), torch.ones(3, 2, dtype=torch.float64), rtol=1e-12, atol=0)
    z_t = torch.einsum("bcn,bn->bc", F.flatten(2), Pt.flatten(1))
    torch.testing.assert_close(m[:, 0], z_t / z_t.sum(-1, keepdim=True), rtol=1e-12, atol=0)


def test_category_importance_with_empty_category_stays_finite():
    F = torch.rand(1, 4, 2, 2, 2, dtype=torch.float64)
    m = OF.category_importance(F, torch.zeros(1, 1, 2, 2, 2, dtype=torch.float64))
    assert torch.isfinite(m).all()
    assert torch.all(m[0, 0] == 0)  # no tumor probability anywhere: m_t is zero, not NaN


@pytest.mark.parametrize("name,variant", [("cga", "full"), ("cga_minus", "minus"), ("cga_t", "pos"), ("cga_n", "neg")])
def test_cga_head_module_equals_transcription(name, variant):
    head = omkit.create_attention(name, 5, num_classes=3).double()
    F, Pt, _ = random_inputs(C=5, K=3)

    def flat(conv):
        return (None, None) if conv is None else (conv.weight.detach().flatten(1), conv.bias.detach())

    wp, bp = flat(head.score_pos)
    wn, bn = flat(head.score_neg)
    wo, bo = flat(head.final)
    want = transcribe_cga(F, Pt, wp, bp, wn, bn, wo, bo, variant, head.eps)
    torch.testing.assert_close(head(F, Pt), want, rtol=1e-10, atol=1e-12)


def test_cga_passes_no_gradient_into_guidance_but_trains_features_and_weights():
    F, Pt, (wp, bp, wn, bn, wo, bo) = random_inputs()
    F.requires_grad_(True)
    Pt.requires_grad_(True)
    wp.requires_grad_(True)
    OF.cga(F, Pt, wp, bp, wn, bn, wo, bo).sum().backward()
    assert Pt.grad is None
    assert F.grad is not None and F.grad.abs().sum() > 0
    assert wp.grad is not None and wp.grad.abs().sum() > 0


def test_cga_rejects_mismatched_guidance():
    F, Pt, (wp, bp, wn, bn, wo, bo) = random_inputs()
    with pytest.raises(ValueError, match="guidance must be"):
        OF.cga(F, Pt[:, :, :1], wp, bp, wn, bn)
    with pytest.raises(ValueError, match="unknown CGA variant"):
        OF.cga(F, Pt, wp, bp, wn, bn, variant="both")
