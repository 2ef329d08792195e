import unittest

from calc import clamp, mean, median


class TestCalc(unittest.TestCase):
    def test_mean(self):
        self.assertEqual(mean([1, 2, 3]), 2)

    def test_median_odd(self):
        self.assertEqual(median([3, 1, 2]), 2)

    def test_clamp_low(self):
        self.assertEqual(clamp(-4, 0, 5), 0)
