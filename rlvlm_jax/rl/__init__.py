"""The learning side. `gae`, `losses` and `minibatch` hold the PPO math as pure, jittable functions.

They take log-probs, values and masks, never a model, so every piece can be checked against a
NumPy loop on the CPU.
"""
