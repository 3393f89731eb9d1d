"""A stand-in for the `time` module in the training loop, so a time budget plans the same steps on any machine."""


class TickingClock:
    """Every `perf_counter()` reading is `tick` seconds after the last."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now
