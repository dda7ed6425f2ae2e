import numpy as np
from gymnasium.utils.env_checker import check_env

from qscale.simulator.gym_env import QScaleEnv
from qscale.simulator.splits import packaged_trace


def make():
    return QScaleEnv(traces=[packaged_trace()], split="all")


def test_passes_gymnasium_checker():
    check_env(make(), skip_render_check=True)


def test_episode_truncates_and_is_reproducible():
    def episode(seed):
        env = make()
        obs, _ = env.reset(seed=seed)
        rewards, n = [], 0
        while True:
            obs, r, term, trunc, _ = env.step(n % 6)
            assert env.observation_space.contains(obs)
            rewards.append(r)
            n += 1
            if term or trunc:
                break
        return np.array(rewards), n

    r1, n1 = episode(3)
    r2, n2 = episode(3)
    r3, _ = episode(4)
    assert n1 == n2 == 480
    assert np.array_equal(r1, r2)
    assert not np.array_equal(r1, r3)
