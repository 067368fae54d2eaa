"""The hot-seed benchmark's reading of sysbench's interval reports into tps per window of time."""

import math

from twisted.trial.unittest import SynchronousTestCase

from bench.write_load import mean_tps, parse_tps

REPORT = "[ 12s ] thds: 2 tps: 2012.03 qps: 12068.19 (r/w/o: 0.00/8044.13/4024.06) lat (ms,95%): 1.61 err/s: 0.00 " \
         "reconn/s: 0.00\n"


class ParseTpsTests(SynchronousTestCase):
    """Only interval report lines give a rate; the banner and the summary do not."""

    def test_an_interval_report(self):
        self.assertEqual(parse_tps(REPORT), 2012.03)
        self.assertEqual(parse_tps("[ 1s ] thds: 16 tps: 7 qps: 42 (r/w/o: 0/28/14) lat (ms,95%): 9 err/s: 0\n"), 7.0)

    def test_other_lines(self):
        for line in ("sysbench 1.0.20 (using system LuaJIT 2.1.0-beta3)\n", "Threads started!\n",
                     "    transactions:                        15120  (1259.04 per sec.)\n", "\n"):
            self.assertIsNone(parse_tps(line), line)


class MeanTpsTests(SynchronousTestCase):
    """Each report covers the second before it came; a window weighs each by its overlap."""

    samples = [(101.0, 100.0), (102.0, 200.0), (103.0, 400.0)]

    def test_whole_intervals(self):
        self.assertEqual(mean_tps(self.samples, 100.0, 103.0), (100 + 200 + 400) / 3)
        self.assertEqual(mean_tps(self.samples, 101.0, 102.0), 200.0)

    def test_partly_covered_intervals_count_by_their_share(self):
        # half of the first second (100) and all of the second (200)
        self.assertAlmostEqual(mean_tps(self.samples, 100.5, 102.0), (100 * 0.5 + 200) / 1.5)

    def test_no_report_in_the_window(self):
        self.assertTrue(math.isnan(mean_tps(self.samples, 200.0, 210.0)))
        self.assertTrue(math.isnan(mean_tps([], 0.0, 1.0)))
