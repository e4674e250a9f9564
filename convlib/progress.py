"""A small progress bar: count, rate, ETA and live values, on stderr.

On a terminal it redraws one line; in a log (not a TTY) it writes a line every ``log_every``
seconds and one at the end, so CI logs stay short.
"""
import sys
import time


def _fmt_time(s):
    s = int(max(s, 0))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class Progress:
    """``with Progress(total, "epoch 1") as bar: bar.update(1, loss=0.3)``."""

    def __init__(self, total, desc="", unit="it", enabled=True, stream=None, log_every=10.0):
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.log_every = log_every
        self.n, self.values = 0, {}
        self.start = self.last = time.perf_counter()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def set(self, **values):
        self.values.update(values)

    def update(self, n=1, **values):
        self.n += n
        self.values.update(values)
        now = time.perf_counter()
        if self.enabled and now - self.last >= (0.1 if self.tty else self.log_every):
            self.last = now
            self._draw(final=False)

    def line(self):
        elapsed = time.perf_counter() - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        total = self.total or 0
        frac = self.n / total if total else 0.0
        bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
        eta = _fmt_time((total - self.n) / rate) if rate and total else "?"
        vals = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.values.items())
        return (f"{self.desc} [{bar}] {self.n}/{total} {rate:.1f} {self.unit}/s "
                f"elapsed {_fmt_time(elapsed)} eta {eta} {vals}").strip()

    def _draw(self, final):
        end = "\n" if final or not self.tty else ""
        self.stream.write(("\r\033[K" if self.tty else "") + self.line() + end)
        self.stream.flush()

    def close(self):
        if self.enabled:
            self._draw(final=True)
            self.enabled = False
