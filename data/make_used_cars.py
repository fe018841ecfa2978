"""Write data/used_cars.csv: 240 used-car listings with text, boolean, date and numeric columns.

Deterministic (seeded), with planted effects, so the walkthrough in README.md can show them
recovered. price_k (thousands of euros) =
  9.0 + make (Fiat 0, Ford +1.5, Toyota +3.0, VW +2.5) + fuel (diesel 0, electric +6.0, petrol -1.0)
  + 1.2 if automatic + 0.0015 per day of first_registered (about 0.55 a year newer)
  - 0.03 per 1000 km of mileage + 0.08 per kW of power_kw + noise (sd 1.0).
Run: python data/make_used_cars.py
"""

import csv
import datetime
from pathlib import Path

import numpy as np

MAKE = {"Fiat": 0.0, "Ford": 1.5, "Toyota": 3.0, "VW": 2.5}
FUEL = {"diesel": 0.0, "electric": 6.0, "petrol": -1.0}


def rows(n: int = 240, seed: int = 17):
    rng = np.random.default_rng(seed)
    start = datetime.date(2010, 1, 1)
    for i in range(n):
        make = rng.choice(list(MAKE))
        fuel = rng.choice(list(FUEL), p=[0.35, 0.15, 0.5])
        automatic = bool(rng.random() < 0.4)
        reg = start + datetime.timedelta(days=int(rng.integers(0, 14 * 365)))
        days = (reg - datetime.date(1970, 1, 1)).days
        age_years = (datetime.date(2024, 6, 1) - reg).days / 365.25
        mileage = round(float(max(1000.0, rng.normal(14000 * age_years, 8000))), -2)
        power = int(rng.integers(50, 160))
        price = (9.0 + MAKE[make] + FUEL[fuel] + 1.2 * automatic + 0.0015 * (days - 14610)
                 - 0.03 * mileage / 1000 + 0.08 * power + rng.normal(0, 1.0))
        yield [f"L{1000 + i}", make, fuel, automatic, reg.isoformat(), f"{mileage:.0f}", power, f"{price:.2f}"]


def main() -> None:
    out = Path(__file__).with_name("used_cars.csv")
    with open(out, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["listing", "make", "fuel", "automatic", "first_registered", "mileage_km", "power_kw", "price_k"])
        w.writerows(rows())


if __name__ == "__main__":
    main()
