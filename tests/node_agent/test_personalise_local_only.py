"""A clinic never serves worse than it could alone: its own model, trained on its rows only, is one of
its personalisation candidates ("local-only"). Under DP, or at a clinic unlike the others, the
federated model can be worse there than the clinic's own; the clinic's validation rows then choose
its own model."""

from __future__ import annotations

import numpy as np

from models.calibration import Calibration
from models.encoding import SiteStatistics
from models.nets import build_model, get_flat
from models.training import TrainConfig, evaluate, train
from node_agent.local import load_site_data, personalise


def test_a_misleading_global_model_loses_to_the_clinics_own(small_federation, referral_spec):
    data = load_site_data(small_federation[0], referral_spec)
    params = SiteStatistics.from_frame(referral_spec, data.train_frame).encoding_params()
    x, y, x_test, y_test = data.encoded(params)
    config = TrainConfig.from_spec(referral_spec)
    # The global model a coordinator (or heavy DP noise) could send: a good model's weights shuffled
    # across the features, which no recalibration undoes.
    misleading = build_model(referral_spec, x.shape[1])
    train(misleading, referral_spec, x, y, config)
    flat = np.random.default_rng(0).permutation(get_flat(misleading))
    result = personalise(data, params, flat, Calibration(), config, local_epochs=config.epochs * 15)
    assert "local-only" in result.validation_log_loss
    assert result.validation_log_loss[result.choice] == min(result.validation_log_loss.values())
    # One round's epochs of fine-tuning from the shuffled weights do not undo them; the clinic's own
    # model does, and it serves exactly as a local-only model trained on all its rows.
    own = build_model(referral_spec, x.shape[1])
    alone = TrainConfig.from_spec(referral_spec, epochs=config.epochs * 15)
    train(own, referral_spec, x, y, alone)
    served = evaluate(result.model, referral_spec, x_test, y_test, result.calibration)["auroc"]
    assert result.choice == "local-only", result.validation_log_loss
    assert served == np.float64(evaluate(own, referral_spec, x_test, y_test)["auroc"])
