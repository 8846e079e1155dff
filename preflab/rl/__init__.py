"""The RLHF road's shared pieces below the trainers (``rm``, ``ppo``, and any online method).

    heads      scalar heads on a transformer body: a reward score per sequence, a value per token
    tensors    sampled responses as tensors: the rollout batch and its no-grad passes, EOS
               truncation, the missing-EOS penalty, the per-token reward (KL at every token,
               score at the last)
    kl_control the fixed and the adaptive KL coefficient (Ziegler et al. 2019)
    roles      policy, value, reward and reference held as four models (``classic``) or as
               adapters on one frozen base (``shared``), with tensor bytes per role

May import: errors, config, data, losses, models, runtime, rewards, generation, evaluation, training.
"""
