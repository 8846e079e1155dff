"""The RLHF road's shared pieces below the algorithm files (``rm``, ``ppo``, ``rloo``, ``grpo``,
``reinforce-pp``, and any online method), and the one loop the RL methods run.

    loop       the loop of every RL method on prompts (``train``, ``update``) and what a method
               gives it (``Algorithm``)
    group      what RLOO and GRPO share in it: the group flags, the clipped surrogate, TRL's
               figures
    common     the rollout flags, opening and closing a run, collecting a scored rollout, the
               held-out evaluation, cross-process averages and whitening

    tensors    sampled responses as tensors: the rollout batch and its no-grad passes, EOS
               truncation, the missing-EOS penalty, the per-token reward (KL at every token,
               score at the last)
    kl_control the fixed and the adaptive KL coefficient (Ziegler et al. 2019)
    roles      policy, value, reward and reference held as four models (``classic``) or as
               adapters on one frozen base (``shared``), with tensor bytes per role

The scalar heads (a reward per sequence, a value per token) are ``preflab.models.heads``.

May import: errors, config, data, losses, models, runtime, rewards, generation, evaluation,
training.
"""
