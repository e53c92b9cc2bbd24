"""RLSD (RLVR with Self-Distillation, arXiv 2604.03128) as pure tensor functions.

The steps, in the paper's order:
  3.   group_advantages       A_i = (r_i - mean(r)) / (std(r) + eps), per group of G
  4.   teacher_prompt         the teacher's privileged context: question + reference answer
  -    token_logprobs         log p(y_t) from logits, at the sampling temperature
  6.   log_evidence_weight    log w_t = sign(A_i) * Delta_t,  Delta_t = log p_T(y_t) - log p_S(y_t)
  7.   lam_schedule           lam = lam0 * max(0, 1 - step / decay_steps)   (0 steps: constant)
  5-8. rlsd_token_advantages  Â_t = A_i * ((1 - lam) + lam * clip(w_t, 1 - eps_w, 1 + eps_w))
  9.   policy_loss            PPO clipped surrogate, token mean over the global batch
  -    generalized_jsd        the OPSD baseline's per-token divergence (teacher vs student)
  -    student_prompt, leaked the student's prompt; does a response give the teacher's context away

Shapes: N responses, T response tokens (right-padded). `mask` is 1 on real response tokens (EOS
included) and 0 on padding. No I/O, no models, no ranks, no host syncs (statistics are returned
as 0-d tensors): copy this file into any trainer.
"""
import math

import torch


def group_advantages(rewards, group_size, eps=1e-6):
    """A_i = (r_i - mean_g(r)) / (std_g(r) + eps), over the G = group_size responses of a prompt.

    rewards: [N] with the G responses of each prompt consecutive (N = num_prompts * G).
    std is unbiased (torch.std); a group whose rewards are all equal gets A = 0 exactly.
    Returns [N] float32.
    """
    if group_size < 2:
        raise ValueError(
            f"group_size must be >= 2 (unbiased std of one sample is undefined), got {group_size}")
    r = rewards.float().view(-1, group_size)  # [P, G]
    adv = (r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, keepdim=True) + eps)
    return adv.view(-1)  # [N]


def token_logprobs(logits, tokens, temperature=1.0):
    """log p(tokens) = log_softmax(logits / temperature)[tokens], computed in float32 or wider.

    logits: [N, T, V] where logits[:, t] predicts tokens[:, t]; tokens: [N, T] -> [N, T].
    Use the sampling temperature everywhere (rollout, old/new policy, teacher).
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature  # [N, T, V]
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # [N, T]
    return picked - torch.logsumexp(logits, dim=-1)  # [N, T]


def log_evidence_weight(adv, delta):
    """log w_t = sign(A_i) * Delta_t: the direction-aware evidence weight (step 6), in log space.

    adv: [N] (or a scalar), delta: [N, T] (or [T]). exp() of it is w_t, always > 0; > 1 where the
    teacher backs a rewarded token more than the student does, or a penalised token less."""
    return torch.sign(adv).unsqueeze(-1) * delta


def lam_schedule(step, lam0=0.5, decay_steps=50):
    """lam(step) = lam0 * max(0, 1 - step / decay_steps): linear from lam0 at step 0 to 0 at
    step decay_steps.

    After the decay RLSD is plain GRPO. decay_steps = 0 means no decay: lam = lam0 throughout.
    """
    if decay_steps <= 0:
        return lam0
    return lam0 * max(0.0, 1.0 - step / decay_steps)


def rlsd_token_advantages(adv, logp_teacher, logp_student, mask, lam, eps_w=0.2):
    """Direction-aware, teacher-weighted token advantages (steps 5-8).

        Delta_t = logp_T[t] - logp_S[t]                       privileged information gain (no grad)
        w_t     = exp(sign(A_i) * Delta_t)                     evidence weight, always > 0
        wbar_t  = (1 - lam) + lam * clip(w_t, 1 - eps_w, 1 + eps_w)
        Â_t     = A_i * wbar_t

    adv: [N]; logp_teacher, logp_student, mask: [N, T]. The clip is applied in log space, which is
    the same function and cannot overflow. lam = 0 gives exactly A_i on every token (GRPO).
    Returns (token_adv [N, T] zero on padding, stats): stats holds 0-d tensor sums over real tokens,
    so that micro-batches and ranks add up (no host sync here): delta_sum, w_sum (of the clipped w),
    tokens; and over the tokens of responses with A != 0, the only ones a weight can change,
    clip_low_tokens, clip_high_tokens (w clipped at 1 - eps_w / 1 + eps_w) and weighted_tokens.
    """
    mask = mask.float()
    delta = (logp_teacher - logp_student).detach().float() * mask  # [N, T]
    log_w = log_evidence_weight(adv, delta)  # [N, T]
    log_low = math.log(1 - eps_w)
    log_high = math.log(1 + eps_w)
    w_clipped = log_w.clamp(log_low, log_high).exp()  # [N, T]
    w_bar = (1 - lam) + lam * w_clipped  # [N, T]
    token_adv = adv.unsqueeze(1) * w_bar * mask  # [N, T]

    weighted = mask * (adv != 0).unsqueeze(1)  # [N, T] tokens whose weight can differ from 1
    stats = {
        "delta_sum": delta.sum(),
        "w_sum": (w_clipped * mask).sum(),
        "clip_low_tokens": ((log_w < log_low).float() * weighted).sum(),
        "clip_high_tokens": ((log_w > log_high).float() * weighted).sum(),
        "tokens": mask.sum(),
        "weighted_tokens": weighted.sum(),
    }
    return token_adv, stats


def policy_loss(logp, logp_old, token_adv, mask, clip_low=0.2, clip_high=0.28, num_tokens=None):
    """PPO/GRPO clipped surrogate, summed over tokens and divided by the global token count:

        rho_t = exp(logp_t - logp_old_t)
        loss  = - sum_t mask_t * min(rho_t Â_t, clip(rho_t, 1 - clip_low, 1 + clip_high) Â_t)
                / num_tokens

    logp: [N, T] with grad; logp_old, token_adv, mask: [N, T]. num_tokens is the count of response
    tokens in the whole step (all ranks, all micro-batches), so summing micro-batch losses over
    ranks gives the global token mean; it defaults to mask.sum(). No KL, no entropy bonus. The
    log-ratio is clamped to [-20, 20] so that a wild token gives a large finite value, not inf.
    Returns (loss scalar, stats): 0-d tensor sums over real tokens, with no host sync:
    ratio_clipped_tokens (tokens where the clipped term is the smaller), ratio_sum, tokens.
    """
    mask = mask.float()
    if num_tokens is None:
        num_tokens = mask.sum().clamp(min=1)
    ratio = torch.exp((logp - logp_old.detach()).clamp(-20, 20))  # [N, T]
    surr = ratio * token_adv  # [N, T]
    surr_clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * token_adv  # [N, T]
    loss = -(torch.minimum(surr, surr_clipped) * mask).sum() / num_tokens
    stats = {"ratio_clipped_tokens": ((surr_clipped < surr).float() * mask).sum(),
             "ratio_sum": (ratio.detach() * mask).sum(),
             "tokens": mask.sum()}
    return loss, stats


def generalized_jsd(student_logits, teacher_logits, beta=0.5, temperature=1.0):
    """Per-position generalized Jensen-Shannon divergence of the OPSD baseline (arXiv 2601.18734):

        JSD_b(p_T, p_S) = b KL(p_T || M) + (1 - b) KL(p_S || M),    M = b p_T + (1 - b) p_S

    between the teacher's and the student's full next-token distributions at `temperature`.
    student_logits [C, V] (the gradient flows through these), teacher_logits [C, V] (detached)
    -> [C]. Computed in log space in float32; 0 < beta < 1; zero where the two agree.
    """
    if not 0 < beta < 1:
        raise ValueError(f"beta must be in (0, 1), got {beta}")
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    log_s = torch.log_softmax(student_logits.to(dtype) / temperature, -1)  # [C, V]
    log_t = torch.log_softmax(teacher_logits.detach().to(dtype) / temperature, -1)
    log_m = torch.logaddexp(log_t + math.log(beta), log_s + math.log(1 - beta))  # log M
    kl_t = (log_t.exp() * (log_t - log_m)).sum(-1)  # KL(p_T || M)
    kl_s = (log_s.exp() * (log_s - log_m)).sum(-1)  # KL(p_S || M)
    return beta * kl_t + (1 - beta) * kl_s  # [C]


# ----------------------------------------------------------------------------- the prompts
INSTRUCTION = "Give the final answer as <answer>...</answer>."
# Phrases of the teacher's privileged block: a student response that uses one has leaked it.
LEAK_PHRASES = ("reference solution", "reference answer", "given answer", "given solution",
                "provided answer", "provided solution", "the solution says", "the answer given")


def student_prompt(question):
    """What the policy sees: the question and the answer format."""
    return f"{question}\n{INSTRUCTION}"


def teacher_prompt(question, answer):
    """Privileged context (step 4): the question plus the reference answer, same answer format."""
    return (f"{question}\nHere is a reference solution: {answer}\n"
            f"Solve the problem in your own way and reach the same answer. {INSTRUCTION}")


def leaked(response):
    """Does a student response refer to the teacher's privileged block?"""
    text = " ".join(response.lower().split())
    return any(p in text for p in LEAK_PHRASES)
