"""Schedule callbacks: tau control direction and bounds, alpha annealing, pretrain bypass."""

import numpy as np
import pytest
import tensorflow as tf

from cq_codec.quantizers import GumbelQuantizer, Quantizer, Schedule, SoftmaxQuantizer, VectorQuantizer
from cq_codec.training.callbacks import PretrainBypass, QuantizerSchedule, TauController


def _drive(ctrl, h, steps):
    ctrl.on_epoch_begin(0)
    for b in range(steps):
        ctrl.on_train_batch_end(b, {"H_1": h})


@pytest.mark.parametrize("h, direction", [(3.0, 1), (1.0, -1), (2.0, 0)])
def test_tau_moves_toward_the_target(h, direction):
    tau = tf.Variable([0.0, 0.0])
    ctrl = TauController(tau, {1: ("H_1", 2.0)}, gain=0.1, every=5, tau_init=0.5)
    _drive(ctrl, h, 50)
    assert tau.numpy()[0] == 0.0  # streams without a target are left alone
    assert np.sign(round(tau.numpy()[1] - 0.5, 9)) == direction


def test_validation_calibration_steers_held_out_entropy_to_the_target():
    # Training batches read 2.0 = the target, but held-out speech reads 1.6 (20 % under):
    # the calibrated controller raises the training goal by 2.0 / 1.6 and lowers tau.
    tau = tf.Variable([0.0, 0.0])
    ctrl = TauController(tau, {1: ("H_1", 2.0)}, gain=0.1, every=5, tau_init=0.5, calibrate=True)
    _drive(ctrl, 2.0, 20)
    assert tau.numpy()[1] == pytest.approx(0.5)            # on target: tau unchanged
    ctrl.on_epoch_end(0, {"H_1": 2.0, "val_H_1": 1.6})
    assert ctrl.scale[1] == pytest.approx(np.sqrt(1.25))   # geometric mean with the old scale 1
    ctrl.on_epoch_end(1, {"H_1": 2.0, "val_H_1": 1.6})
    assert ctrl.scale[1] == pytest.approx(1.25 ** 0.75)
    _drive(ctrl, 2.0, 20)
    assert tau.numpy()[1] < 0.5
    # Without calibration (or without validation logs) the scale stays 1.
    plain = TauController(tf.Variable([0.0, 0.0]), {1: ("H_1", 2.0)}, gain=0.1, every=5)
    _drive(plain, 2.0, 20)
    plain.on_epoch_end(0, {"val_H_1": 1.6})
    ctrl.on_epoch_end(2, {"H_1": 2.0})
    assert plain.scale[1] == 1.0 and ctrl.scale[1] == pytest.approx(1.25 ** 0.75)
    # A wild validation reading is clipped: the scale never leaves [0.5, 2].
    for e in range(3, 20):
        ctrl.on_epoch_end(e, {"val_H_1": 0.01})
    assert ctrl.scale[1] <= 2.0 and ctrl.scale[1] == pytest.approx(2.0, rel=1e-3)


def test_signed_control_rewards_entropy_when_the_codes_stay_under_target():
    tau = tf.Variable([0.0, 0.0])
    ctrl = TauController(tau, {1: ("H_1", 2.0)}, gain=0.2, every=5, tau_init=0.5, signed=True)
    _drive(ctrl, 1.0, 400)                       # far under target with any penalty
    assert tau.numpy()[1] < 0                    # tau crossed zero: entropy is rewarded
    ctrl.on_epoch_begin(1)                       # a negative tau is kept, not re-initialised
    assert tau.numpy()[1] < 0
    plain = TauController(tf.Variable([0.0, 0.0]), {1: ("H_1", 2.0)}, gain=0.2, every=5, tau_init=0.5)
    _drive(plain, 1.0, 400)
    assert plain.tau.numpy()[1] == pytest.approx(1e-3)   # the multiplicative rule stops at tau_min
    # Far from zero the signed rule is the multiplicative one.
    a, b = tf.Variable([0.0, 5.0]), tf.Variable([0.0, 5.0])
    TauController(a, {1: ("H_1", 2.0)}, gain=0.1, every=1, signed=True).on_train_batch_end(0, {"H_1": 3.0})
    TauController(b, {1: ("H_1", 2.0)}, gain=0.1, every=1).on_train_batch_end(0, {"H_1": 3.0})
    assert a.numpy()[1] == pytest.approx(b.numpy()[1], rel=1e-3)


def test_a_collapsed_stream_is_reported_and_cleared_when_it_recovers(caplog):
    tau = tf.Variable([0.0, 0.0, 0.0])
    ctrl = TauController(tau, {1: ("H_1", 2.0), 2: ("H_2", 1.0)}, gain=0.1, every=5, active_from_epoch=1)
    run = lambda epoch, h1, h2: (ctrl.on_epoch_begin(epoch),
                                 [ctrl.on_train_batch_end(b, {"H_1": h1, "H_2": h2}) for b in range(10)],
                                 ctrl.on_epoch_end(epoch, {}))
    with caplog.at_level("WARNING", logger="cq_codec.training"):
        run(0, 0.0, 1.0)                     # a quantization-free epoch is not judged
        assert ctrl.collapsed == {} and not caplog.records
        run(1, 0.09, 1.0)                    # 4.5 % of the target: collapsed
        assert ctrl.collapsed == {"H_1": (pytest.approx(0.09), 2.0)}
        assert "H_1 is 0.0900 bits/symbol against a target of 2.000" in caplog.text
        run(2, 0.11, 1.0)                    # 5.5 %: no longer
        assert ctrl.collapsed == {}


def test_tau_is_clipped_and_waits_for_pretrain():
    tau = tf.Variable([0.0, 0.0])
    ctrl = TauController(tau, {1: ("H_1", 1.0)}, gain=5.0, every=1, tau_max=10.0, active_from_epoch=1)
    _drive(ctrl, 9.0, 10)  # epoch 0 is a pretrain epoch: no control
    assert tau.numpy()[1] == 0.0
    ctrl.on_epoch_begin(1)
    for b in range(10):
        ctrl.on_train_batch_end(b, {"H_1": 9.0})
    assert tau.numpy()[1] == pytest.approx(10.0)


def test_one_callback_drives_every_quantizers_schedule():
    soft = SoftmaxQuantizer()
    gumbel = GumbelQuantizer(codebook_size=8, temperature=2.0, min_temperature=0.5, anneal_rate=0.01)
    vq = VectorQuantizer(codebook_size=8)          # schedules nothing: the base class's no-op
    sched = QuantizerSchedule([soft, gumbel, vq], Schedule(20.0, 320.0, 100), begin_epoch=1, steps_per_epoch=50)
    sched.on_epoch_begin(0)                        # a quantization-free epoch keeps the step-0 values
    sched.on_train_batch_begin(30)
    assert float(soft.alpha.numpy()) == pytest.approx(20.0)
    assert float(gumbel.temperature.numpy()) == pytest.approx(2.0)
    sched.on_epoch_begin(1)
    assert float(soft.alpha.numpy()) == pytest.approx(20.0)
    sched.on_train_batch_begin(50)  # halfway: the geometric mean; the temperature by its own rate
    assert float(soft.alpha.numpy()) == pytest.approx(80.0, rel=1e-5)
    assert float(gumbel.temperature.numpy()) == pytest.approx(2.0 * np.exp(-0.5), rel=1e-5)
    sched.on_epoch_begin(5)                        # past the plan: alpha holds at its end value
    assert float(soft.alpha.numpy()) == pytest.approx(320.0)
    assert float(gumbel.temperature.numpy()) == pytest.approx(0.5)
    assert vq.anneal(7, Schedule()) is None and Quantizer().anneal(0) is None


def test_a_trainable_alpha_is_not_scheduled():
    q = SoftmaxQuantizer(alpha=50.0, alpha_mode="trainable")
    QuantizerSchedule([q], Schedule(20.0, 320.0, 10), begin_epoch=0, steps_per_epoch=5).on_epoch_begin(3)
    assert float(q.alpha.numpy()) == pytest.approx(50.0)


def test_pretrain_bypass_switches_off_after_pretrain():
    class M:
        bypass = tf.Variable(0.0)
    m = M()
    cb = PretrainBypass([m], 2)
    cb.on_epoch_begin(1)
    assert float(m.bypass.numpy()) == 1.0
    cb.on_epoch_begin(2)
    assert float(m.bypass.numpy()) == 0.0


@pytest.mark.parametrize("h, sign", [(1.0, -1), (3.0, 1)])
def test_signed_control_from_zero_moves_either_way(h, sign):
    # tau_init 0: no penalty until the codes' entropy says which way to push.
    tau = tf.Variable([0.0, 0.0])
    ctrl = TauController(tau, {1: ("H_1", 2.0)}, gain=0.2, every=5, tau_init=0.0, signed=True)
    ctrl.on_epoch_begin(0)
    assert tau.numpy()[1] == 0.0
    _drive(ctrl, 2.0, 20)                        # on target: tau stays at zero
    assert tau.numpy()[1] == 0.0
    _drive(ctrl, h, 20)
    assert np.sign(tau.numpy()[1]) == sign
