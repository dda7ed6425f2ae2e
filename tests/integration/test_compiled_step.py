"""torch.compile'd step gives the eager step's results, resets included."""

import numpy as np
import torch

from qscale import actions
from qscale.simulator import env as sim
from qscale.simulator.tracebank import TraceBank


def test_compiled_step_matches_eager():
    t = np.arange(3000)
    bank = TraceBank.from_arrays(["sine"], [100.0 + 80.0 * np.sin(t / 40.0)])
    params = sim.make_params(bank, 64, seed=4, config=sim.SimConfig(episode_steps=60))
    gen = torch.Generator().manual_seed(1)
    acts = torch.randint(0, actions.N_ACTIONS, (130, 64), generator=gen)
    compiled = sim.compiled_step()
    s_e, _ = sim.reset(params)
    s_c, _ = sim.reset(params)
    for i in range(130):
        s_e, o_e, r_e, _, tr_e, _ = sim.step(s_e, acts[i], params)
        s_c, o_c, r_c, _, tr_c, _ = compiled(s_c, acts[i], params)
        assert torch.equal(tr_e, tr_c)
        torch.testing.assert_close(o_c, o_e, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(r_c, r_e, rtol=1e-5, atol=1e-5)
        assert torch.equal(s_c.replicas, s_e.replicas)
