"""The web app's admission gate: `concurrency` jobs run, `queue_size` wait, the rest are
refused at once (no server needed; the API test in test_app.py runs it through gradio)."""

import threading
import time

import pytest

from t2i.app.admission import Admission, Busy


def test_admits_running_plus_waiting_and_refuses_the_rest_at_once():
    gate = Admission(concurrency=2, queue_size=3)
    release = threading.Event()
    inside, most_inside, lock = [0], [0], threading.Lock()
    outcomes: list[str] = []

    def job():
        try:
            with gate.admit():
                with lock:
                    inside[0] += 1
                    most_inside[0] = max(most_inside[0], inside[0])
                release.wait(10)
                with lock:
                    inside[0] -= 1
            outcomes.append("done")
        except Busy as e:
            outcomes.append(str(e))

    threads = [threading.Thread(target=job) for _ in range(5)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while gate.admitted < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gate.admitted == 5  # 2 running + 3 waiting

    t0 = time.monotonic()
    for _ in range(3):
        with pytest.raises(Busy, match="busy: 2 job\\(s\\) running and 3 waiting"):
            with gate.admit():
                pytest.fail("a sixth job got in")
    assert time.monotonic() - t0 < 1.0  # refused at once, not after a wait

    release.set()
    for t in threads:
        t.join(10)
    assert outcomes == ["done"] * 5
    assert most_inside[0] == 2  # never more than `concurrency` running
    assert gate.admitted == 0  # every place given back
    with gate.admit():  # and the gate takes new work again
        pass


def test_a_failing_job_gives_its_place_back():
    gate = Admission(concurrency=1, queue_size=0)
    with pytest.raises(RuntimeError, match="generation failed"):
        with gate.admit():
            raise RuntimeError("generation failed")
    assert gate.admitted == 0
    with gate.admit():
        with pytest.raises(Busy):
            with gate.admit():
                pass


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="concurrency >= 1"):
        Admission(concurrency=0, queue_size=1)
