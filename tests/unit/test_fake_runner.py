"""The shared fake process runner stays a stand-in for the real one."""

import inspect

from twisted.trial.unittest import SynchronousTestCase

from orchagent.errors import Busy
from orchagent.process import CommandFailed, CommandTimedOut, ProcessRunner
from tests.support.fake_runner import FakeRunner


class FakeRunnerTests(SynchronousTestCase):
    """The fake takes every argument the real ProcessRunner takes and fails the ways it fails."""

    def test_accepts_every_argument_of_the_real_runner(self):
        fake = FakeRunner()
        for method in ("run", "run_configured", "start", "start_configured"):
            parameters = list(inspect.signature(getattr(ProcessRunner, method)).parameters.values())[1:]  # no self
            positional = ["x" for p in parameters if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD]
            keywords = {p.name: "x" for p in parameters if p.kind is p.KEYWORD_ONLY}
            inspect.signature(getattr(fake, method)).bind(*positional, **keywords)  # TypeError if one is missing

    def test_answers_and_failures(self):
        runner = FakeRunner(stdout={"a": b"out"}, exit_codes={"b": 2}, timeouts=("c",), errors={"d": Busy("full", 5)})
        self.assertEqual(self.successResultOf(runner.run(["/bin/a"])).stdout, b"out")
        self.failureResultOf(runner.run(["b"]), CommandFailed)
        self.assertEqual(self.successResultOf(runner.run(["b"], check=False)).exit_code, 2)
        self.failureResultOf(runner.run_configured("sleep 9", name="c"), CommandTimedOut)
        self.failureResultOf(runner.run(["d"]), Busy)
        self.assertRaises(Busy, runner.start, ["d"])
        self.assertEqual(runner.commands, [["/bin/a"], ["b"], ["b"], ["configured", "c"], ["d"], ["d"]])
