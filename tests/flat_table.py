"""A generated flat credit table with the traits of files teams export themselves (shared by several tests)."""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path

HEADERS = [
    "",
    "SeriousDlqin2yrs",
    "RevolvingUtilizationOfUnsecuredLines",
    "age",
    "NumberOfTime30-59DaysPastDueNotWorse",
    "MonthlyIncome",
    "NumberOfDependents",
    "DAYS_BIRTH",
    "DAYS_EMPLOYED",
    "CODE_GENDER",
    "MaritalStatus",
    "Region.Code",
]


def write_flat_table(path: Path, rows: int = 3000, seed: int = 7) -> Path:
    """A flat credit table as teams export it: index column, CamelCase headers, 'NA', sentinel codes, no time, no id."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(HEADERS)
        for i in range(rows):
            age = rng.randint(21, 79)
            late = rng.choice([0, 0, 0, 0, 1, 1, 2, 3, 5]) if rng.random() > 0.01 else rng.choice([96, 98])
            employed = -rng.randint(30, 12000) if rng.random() > 0.15 else 365243
            utilisation = rng.random() * 1.2
            # default risk rises with late payments and utilisation, falls with age: a model has something to learn
            risk = -3.2 + 0.45 * min(late, 6) + 1.6 * utilisation - 0.02 * (age - 45)
            writer.writerow(
                [
                    i,
                    1 if rng.random() < 1 / (1 + math.exp(-risk)) else 0,
                    round(utilisation, 4),
                    age,
                    late,
                    "NA" if rng.random() < 0.2 else round(rng.uniform(800, 25000), 2),
                    "NA" if rng.random() < 0.03 else rng.randint(0, 4),
                    -(age * 365 + rng.randint(0, 364)),
                    employed,
                    rng.choice(["F", "M"]),
                    rng.choice(["married", "single", "divorced", "widowed"]),
                    rng.choice(["N", "E", "S", "W"]),
                ]
            )
    return path
