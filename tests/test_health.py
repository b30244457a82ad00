"""Health with an injected clock: cooldowns return by themselves, limits expire, quota resets."""

from __future__ import annotations

import pytest

from litellm_freerouter.errors import Failure
from litellm_freerouter.health import SAMPLES, Health, ModelStats, _stats_data, _stats_from
from litellm_freerouter.state import MemoryStore


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_cooldown_returns_by_itself() -> None:
    """A cooled model is out for exactly its cooldown, then ready again with no action."""
    clock = Clock()
    health = Health(clock=clock)
    health.cool("m:free", 90, "rate_limited")
    assert not health.ready("m:free") and health.cooling_for("m:free") == 90
    assert health.view("m:free").cool_reason == "rate_limited"
    clock.now += 89.9
    assert not health.ready("m:free")
    clock.now += 0.2
    assert health.ready("m:free") and health.view("m:free").cool_reason == ""


def test_a_shorter_cooldown_never_cuts_a_longer_one() -> None:
    """Cooling again for less keeps the longer cooldown and its reason."""
    clock = Clock()
    health = Health(clock=clock)
    health.cool("m:free", 600, "retry_after")
    health.cool("m:free", 15, "slow")
    assert health.cooling_for("m:free") == 600
    assert health.view("m:free").cool_reason == "retry_after"


def test_next_ready_names_the_first_return() -> None:
    """The soonest return among cooling models is reported; none when nothing cools."""
    clock = Clock()
    health = Health(clock=clock)
    assert health.next_ready_in(["a:free", "b:free"]) is None
    health.cool("a:free", 50, "x")
    health.cool("b:free", 20, "x")
    assert health.next_ready_in(["a:free", "b:free"]) == 20


def test_account_block_expires_at_its_reset() -> None:
    """An account-wide stop holds until its time, then lifts by itself."""
    clock = Clock()
    health = Health(clock=clock)
    failure = Failure("daily_quota", "account", "used", reset_at=clock.now + 100)
    health.block_account(failure, clock.now + 100)
    assert health.account_block() is not None
    clock.now += 101
    assert health.account_block() is None


def test_quota_counts_down_and_resets_at_utc_midnight() -> None:
    """Spending counts down the remaining quota; the next UTC day starts from the limit."""
    clock = Clock(86400 * 20_000 + 3600)  # 01:00 UTC
    health = Health(clock=clock)
    health.set_quota(50, 10)
    health.spend(3)
    assert health.quota_remaining() == 7
    clock.now += 23 * 3600  # past midnight
    assert health.quota_remaining() == 50


def test_measurements_feed_quantiles_and_scores() -> None:
    """First-token samples give quantiles; a faster steady model scores better."""
    health = Health(clock=Clock())
    for seconds in (0.1, 0.2, 0.3, 0.4, 1.0):
        health.record_first_token("a:free", seconds)
    view = health.view("a:free")
    assert view.measured and view.ttft_p50 == 0.3 and view.ttft_p90 == 1.0
    health.record_first_token("b:free", 2.0)
    assert health.stats("a:free").score() < health.stats("b:free").score()
    assert health.stats("a:free").score() < health.stats("never:free").score()


def test_a_slow_loser_is_learnt_as_slow_but_a_quick_loss_teaches_nothing() -> None:
    """A loser's time without a token only ever raises its first-token estimate."""
    health = Health(clock=Clock())
    health.record_first_token("m:free", 0.5)
    health.record_lower_bound("m:free", 0.2)
    assert health.stats("m:free").expected_ttft() == 0.5
    health.record_lower_bound("m:free", 4.5)
    assert health.stats("m:free").expected_ttft() == 2.5
    assert health.stats("m:free").failures == 0
    fresh = health.stats("new:free").expected_ttft()
    health.record_lower_bound("new:free", 0.1)
    assert health.stats("new:free").expected_ttft() == fresh


def test_one_slow_draw_does_not_bench_a_good_model() -> None:
    """A model's expected time is the median of its last races: one draw from its heavy tail
    leaves it ahead of a steadier but slower model (a moving average would put it at 4.8 s
    and behind)."""
    health = Health(clock=Clock())
    for seconds in (0.9, 1.0, 1.1, 1.0, 0.95):
        health.record_first_token("quick:free", seconds)
    for _ in range(3):
        health.record_first_token("steady:free", 1.5)
    health.record_first_token("quick:free", 12.0)
    assert health.stats("quick:free").expected_ttft() == 1.0
    assert health.stats("quick:free").score() < health.stats("steady:free").score()


def test_a_model_that_turned_slow_is_known_within_three_races() -> None:
    """Three races in a row over twice its earlier median (wins, or losses without a token by
    then) mean the model changed: its old times are forgotten."""
    health = Health(clock=Clock())
    for seconds in (0.4, 0.5, 0.6, 0.5, 0.45, 0.55):
        health.record_first_token("m:free", seconds)
    health.record_first_token("m:free", 3.0)
    health.record_lower_bound("m:free", 2.5)
    assert health.stats("m:free").expected_ttft() == 0.5  # two slow races: still the usual
    health.record_lower_bound("m:free", 4.0)
    stats = health.stats("m:free")
    assert stats.lost == [2.5, 4.0] and stats.ttft == [3.0]
    assert stats.expected_ttft() > 2.5
    # And back: three quick wins after slow ones forget the slow ones.
    for seconds in (3.0, 3.5, 4.0, 0.3, 0.35):
        health.record_first_token("m:free", seconds)
    assert health.stats("m:free").expected_ttft() >= 3.0
    health.record_first_token("m:free", 0.3)
    assert health.stats("m:free").expected_ttft() <= 0.35
    assert health.stats("m:free").ttft == [0.3, 0.35, 0.3]


def test_a_steady_model_keeps_its_whole_window() -> None:
    """Ordinary spread (no run of three beyond the middle half) never resets the window, and
    the window holds the last ``SAMPLES`` races, wins and losses together."""
    health = Health(clock=Clock())
    pattern = (1.0, 0.8, 1.3, 0.9, 1.6, 1.1, 0.7, 1.2)
    for i in range(SAMPLES + 8):
        if i % 5 == 4:
            health.record_lower_bound("m:free", 0.5)  # lost early: says little
        else:
            health.record_first_token("m:free", pattern[i % len(pattern)])
    stats = health.stats("m:free")
    assert len(stats.samples) == SAMPLES
    assert 0.9 <= stats.expected_ttft() <= 1.2


def test_stats_written_before_the_shared_window_are_still_read() -> None:
    """State from an earlier version (wins and losses kept apart) still ranks the model."""
    old = _stats_from({"ttft": [0.5, 0.7, 0.6], "lost": [2.0, "bad", -1]})
    assert old.ttft == [0.5, 0.7, 0.6] and old.lost == [2.0]
    assert old.expected_ttft() == 0.6
    again = _stats_from(_stats_data(old))
    assert list(again.samples) == list(old.samples)
    assert _stats_from({"samples": [0.4, float("nan"), True, -1.5]}).lost == [1.5]
    health = Health(clock=Clock(), store=MemoryStore())
    assert isinstance(health.stats("x:free"), ModelStats)


def test_a_models_per_minute_limit_paces_this_process() -> None:
    """Once a model said its limit, sending it more within a minute waits for the oldest
    request to leave the minute; a refused request does not count against the model's limit,
    but does against the account's minute (OpenRouter counts every attempt)."""
    clock = Clock()
    health = Health(clock=clock)
    health.record_attempt("m:free")
    clock.now += 10
    health.record_attempt("m:free")
    health.record_attempt("m:free")  # refused below: not counted
    assert health.limit_wait("m:free") == 0  # no limit known yet
    health.refused("m:free", 2)
    assert health.stats("m:free").limit_rpm == 2
    assert health.limit_wait("m:free") == 50  # the first request leaves the minute in 50 s
    assert health.sent_last_minute() == 3
    assert health.minute_frees_in(3) == 50 and health.minute_frees_in(2) == 60
    assert health.back_in("m:free") == 50 and health.next_ready_in(["m:free"]) == 50
    assert not health.ready("m:free") and health.cooling_for("m:free") == 0
    health.cool("m:free", 70, "rate_limited")
    assert health.back_in("m:free") == 70  # the later of the cooldown and the limit
    clock.now += 50
    assert health.limit_wait("m:free") == 0 and health.back_in("m:free") == 20
    health.refused("n:free", None)  # a 429 without a stated limit teaches no limit
    assert health.stats("n:free").limit_rpm is None


def test_lost_races_lengthen_the_measured_tail() -> None:
    """Quantiles count lost races as lower bounds: a model measured only when quick, but
    often overtaken while still silent, has a slow tail that its wins alone would hide."""
    health = Health(clock=Clock())
    for seconds in (0.2, 0.3, 0.4, 0.5):
        health.record_first_token("m:free", seconds)
    assert health.stats("m:free").quantile(0.5) == 0.3
    for _ in range(4):
        health.record_lower_bound("m:free", 0.45)
    # Four of eight attempts were still silent at 0.45 s: only 3 of 8 are known to have been
    # quicker than 0.5 s, so the median moves from 0.3 to 0.5 s.
    assert health.stats("m:free").quantile(0.5) == 0.5
    health.record_lower_bound("m:free", 3.0)  # past every time seen: the tail reaches it
    assert health.stats("m:free").quantile(0.9) == 3.0


def test_a_window_of_races_does_not_pass_for_a_models_far_tail() -> None:
    """Of n races the largest time is about the 1 - 1/n quantile (of 32 the 97th, of three the
    75th): further out, a quantile stays at a lognormal's with a typical spread until the times
    show their own, and a heavy tail the times do show stands. Nearer quantiles are the times'
    own. So a model with three races is not hedged at the slowest of them."""
    health = Health(clock=Clock())
    for seconds in (1.0, 1.1, 1.2):
        health.record_first_token("few:free", seconds)
    few = health.stats("few:free")
    # Log-mean 0.093, spread sqrt((3 * 0.7**2 + 0.017) / (3 + 2)) = 0.545.
    assert few.quantile(0.5) == 1.1  # within what three races show
    assert few.quantile(0.9) == pytest.approx(2.21, abs=0.01)  # 1.2 s is only their 75th
    assert few.quantile(0.99) == pytest.approx(3.90, abs=0.01)
    # Ten races show their own 90th percentile, twenty their 95th.
    for i in range(20):
        health.record_first_token("ten:free", 0.95 + 0.1 * (i % 2))
        if i == 9:
            assert health.stats("ten:free").quantile(0.9) == 1.05
            assert health.stats("ten:free").quantile(0.95) > 1.2
    assert health.stats("ten:free").quantile(0.95) == 1.05
    # Thirty-two steady races narrow it: spread sqrt((3 * 0.49 + 0.08) / 34) = 0.21.
    for i in range(SAMPLES):
        health.record_first_token("steady:free", 0.95 + 0.1 * (i % 2))
    assert health.stats("steady:free").quantile(0.99) == pytest.approx(1.64, abs=0.01)
    # A heavy tail in the times themselves: 4 of 32 races took ten times the rest.
    for i in range(SAMPLES):
        health.record_first_token("tail:free", 10.0 if i % 8 == 0 else 1.0)
    assert health.stats("tail:free").quantile(0.99) == 10.0


def test_races_lost_early_do_not_pass_for_a_models_far_tail() -> None:
    """Races a model lost just after it started (a hedge overtaken at once) say nothing of its
    tail: three quick wins beside seventeen such losses are not hedged at the slowest of the
    three, any more than the three wins alone are."""
    health = Health(clock=Clock())
    for _ in range(17):
        health.record_lower_bound("hedge:free", 0.1)
    for seconds in (1.0, 1.1, 1.2):
        health.record_first_token("hedge:free", seconds)
        health.record_first_token("alone:free", seconds)
    alone = health.stats("alone:free").quantile(0.95)
    assert alone is not None and alone > 2.0
    assert health.stats("hedge:free").quantile(0.95) == pytest.approx(alone)


def test_send_times_are_kept_for_a_minute_only() -> None:
    """The per-minute counts look back one minute, and a long-running process (a proxy) keeps
    (and stores) no more send times than that, whether or not anything asks for the counts."""
    clock = Clock()
    health = Health(clock=clock)
    for _ in range(300):
        clock.now += 1
        health.record_attempt("m:free")
    assert health.sent_last_minute() == 60
    assert len(health.stats("m:free").sent) == 60
