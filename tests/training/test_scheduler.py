"""The one scheduler of training runs: dependencies, failures, deadline, parallel slots and
finished runs, the same whichever runner starts the jobs."""

import json
import time

from cmrseg.pipelines.scheduler import Job, plan, run_jobs


class _Finished:
    def __init__(self, error):
        self.error = error

    def poll(self):
        return self.error


class _Runner:
    """Starts jobs that end after ``steps`` polls (0: at once); fails the named ones."""

    def __init__(self, fail=(), steps=0, sleep=0.0):
        self.fail, self.steps, self.sleep = set(fail), steps, sleep
        self.started, self.running, self.most = [], 0, 0

    def start(self, job, cfg):
        assert cfg.model == job.model
        self.started.append(job.name)
        time.sleep(self.sleep)
        error = f"boom in {job.name}" if job.name in self.fail else ""
        if not self.steps:
            return _Finished(error)
        runner, left = self, [self.steps]
        runner.running += 1
        runner.most = max(runner.most, runner.running)

        class _Later:
            def poll(self):
                left[0] -= 1
                if left[0] > 0:
                    return None
                if left[0] == 0:
                    runner.running -= 1
                return error

        return _Later()


def test_plan_shares_seg_stages_and_orders_dependencies(tmp_path):
    jobs = plan(["seg_as+ref_as_mt", "seg_ss", "seg_as_mt"], tmp_path)
    names = [j.name for j in jobs]
    assert names.index("seg_as") < names.index("seg_as+ref_as_mt") and names.count("seg_as") == 1
    ref = next(j for j in jobs if j.name == "seg_as+ref_as_mt")
    assert ref.after == "seg_as" and f"seg_stage_run={tmp_path / 'seg_as'}" in ref.overrides


def test_a_failed_seg_stage_skips_its_ref_stage_and_the_others_go_on(tmp_path):
    jobs = plan(["seg_as+ref_as_mt", "seg_ss"], tmp_path)
    runner = _Runner(fail={"seg_as"})
    run_jobs(jobs, runner, "smoke", [], poll_s=0.0)
    status = {j.name: (j.status, j.error) for j in jobs}
    assert status["seg_as"] == ("failed", "boom in seg_as")
    assert status["seg_as+ref_as_mt"] == ("skipped", "needs seg_as (failed)")
    assert status["seg_ss"] == ("done", "")
    assert "seg_as+ref_as_mt" not in runner.started


def test_deadline_and_finished_runs(tmp_path):
    jobs = plan(["seg_ss", "seg_as"], tmp_path)
    done = next(j for j in jobs if j.name == "seg_as").run_dir
    done.mkdir(parents=True)
    (done / "model.json").write_text(json.dumps({"complete": True}))
    runner = _Runner(sleep=0.05)
    run_jobs(jobs + [Job("det_seg", "det_seg", tmp_path / "det_seg")], runner, "smoke", [], deadline_s=0.01,
             poll_s=0.0)
    assert runner.started == ["seg_ss"]  # started before the deadline; seg_as was already complete
    status = {j.name: j.status for j in jobs}
    assert status == {"seg_ss": "done", "seg_as": "done"}


def test_parallel_slots_are_honoured_and_a_bad_override_fails_one_job(tmp_path):
    jobs = plan(["seg_ss", "seg_as_mt", "det_seg"], tmp_path)
    jobs[0].overrides.append("epochs=not-a-number")
    runner = _Runner(steps=3)
    run_jobs(jobs, runner, "smoke", [], parallel=2, poll_s=0.0)
    assert runner.most == 2
    assert jobs[0].status == "failed" and jobs[0].error
    assert [j.status for j in jobs[1:]] == ["done", "done"]


def test_a_job_that_trains_inside_its_start_is_timed_from_its_start(tmp_path):
    """An in-process runner returns from ``start`` only when the run has ended: that time is
    the job's (summary.json's ``seconds``), not the zero after it."""
    jobs = plan(["seg_ss"], tmp_path)
    run_jobs(jobs, _Runner(sleep=0.2), "smoke", [], poll_s=0.0)
    assert jobs[0].status == "done" and jobs[0].seconds >= 0.2
