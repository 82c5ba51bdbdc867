"""The click/conversion simulator: the offline stand-in for online A/B traffic (docs/simulator.md).

- :func:`true_probabilities` gives each ad's true click and post-click conversion probabilities in its context;
- :func:`write_logs` writes impression logs (aggregated or per impression) from a pool of candidate ads, the only
  thing the CTCVR reward model ever learns from;
- :func:`measure` shows a policy's ads to simulated users and reports CTR / CVR / CTCVR, per ad and overall.

The reward side never imports this package's internals; reward hacking therefore shows up as a gap between the
CTCVR model's predictions and :func:`measure`.
"""

from .candidates import KINDS, candidate_ads
from .logs import LogSummary, simulate_impressions, write_logs
from .measure import Measurement, measure
from .model import BASE_RATES, Assessment, Simulator, SimulatorConfig, true_probabilities

__all__ = [
    "BASE_RATES",
    "KINDS",
    "Assessment",
    "LogSummary",
    "Measurement",
    "Simulator",
    "SimulatorConfig",
    "candidate_ads",
    "measure",
    "simulate_impressions",
    "true_probabilities",
    "write_logs",
]
