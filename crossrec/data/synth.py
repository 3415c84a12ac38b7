"""The built-in multi-domain data: a deterministic generator of a catalogue and its users.

Real datasets cannot be redistributed, so crossrec ships this generator as its default data.
It is built so that cross-domain transfer through *text* is learnable but not trivial:

- Items belong to themes (space, cooking, history, ...). Their English titles use words of the
  theme in every domain ("The Last Nebula: A Novel", "Orbit of Comets (1987)", "Nebula Print
  Ceramic Mug"), so a pretrained text encoder can relate a space novel to a space film and a
  space mug. Categories name the genre for books and movies, but only the product type for the
  kitchen-like domains, so titles carry the theme there.
- Users like a few themes (a sparse Dirichlet draw) in every domain they use, and their tastes
  drift over their history (recent items predict the next ones best).
- Popularity is Zipf-like inside each theme and domain; a share of interactions is noise that
  follows global popularity only; users are active in one to all domains.
- Timestamps are increasing per user; ratings follow how much the user likes the theme.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from crossrec import schema
from crossrec.config import SynthConfig
from crossrec.data.dataset import Dataset

# theme -> (adjectives, nouns, book genre, movie genre)
THEMES: dict[str, tuple[list[str], list[str], str, str]] = {
    "space": (["Cosmic", "Stellar", "Lunar", "Orbital", "Galactic", "Interstellar"],
              ["Nebula", "Rocket", "Galaxy", "Astronaut", "Comet", "Orbit", "Planet", "Starship", "Moon", "Asteroid"],
              "Science Fiction", "Sci-Fi"),
    "ocean": (["Deep", "Coastal", "Tidal", "Coral", "Nautical", "Sunken"],
              ["Ocean", "Reef", "Whale", "Tide", "Harbor", "Shipwreck", "Lighthouse", "Sailor", "Island", "Wave"],
              "Sea Stories", "Adventure"),
    "cooking": (["Rustic", "Savory", "Homemade", "Spiced", "Golden", "Sweet"],
                ["Kitchen", "Recipe", "Bread", "Pasta", "Chef", "Baking", "Feast", "Spice", "Pastry", "Soup"],
                "Cookbooks", "Food Documentary"),
    "history": (["Ancient", "Imperial", "Medieval", "Forgotten", "Royal", "Victorian"],
                ["Empire", "Castle", "Pharaoh", "Dynasty", "Knight", "Revolution", "Kingdom", "Roman", "Crown", "Battle"],
                "History", "Historical Drama"),
    "sports": (["Winning", "Olympic", "Athletic", "Championship", "Fearless", "Final"],
               ["Football", "Marathon", "Stadium", "Coach", "Goal", "Tennis", "Boxing", "Team", "Runner", "Season"],
               "Sports", "Sports Drama"),
    "music": (["Acoustic", "Electric", "Melodic", "Soulful", "Jazz", "Rhythmic"],
              ["Guitar", "Piano", "Song", "Orchestra", "Melody", "Band", "Violin", "Concert", "Drum", "Ballad"],
              "Music", "Musical"),
    "gardening": (["Blooming", "Green", "Wild", "Floral", "Organic", "Leafy"],
                  ["Garden", "Rose", "Orchid", "Seed", "Herb", "Greenhouse", "Tulip", "Meadow", "Vine", "Bonsai"],
                  "Gardening", "Nature Documentary"),
    "crime": (["Deadly", "Silent", "Dark", "Hidden", "Secret", "Cold"],
              ["Detective", "Murder", "Alibi", "Suspect", "Heist", "Witness", "Clue", "Crime", "Verdict", "Mystery"],
              "Mystery & Thriller", "Crime Thriller"),
    "wildlife": (["Wild", "Savage", "Roaming", "Majestic", "Feral", "Hunting"],
                 ["Lion", "Wolf", "Elephant", "Safari", "Tiger", "Eagle", "Bear", "Jungle", "Falcon", "Gorilla"],
                 "Nature & Animals", "Wildlife Documentary"),
    "travel": (["Grand", "Distant", "Scenic", "Nomadic", "Exotic", "Wandering"],
               ["Journey", "Passport", "Voyage", "Road Trip", "Map", "Backpacker", "Mountain", "Train", "Compass", "Desert"],
               "Travel", "Road Movie"),
    "fantasy": (["Enchanted", "Mystic", "Magical", "Dragonborn", "Elven", "Cursed"],
                ["Dragon", "Wizard", "Sorcerer", "Spell", "Unicorn", "Kingdom of Elves", "Potion", "Quest", "Fairy", "Amulet"],
                "Fantasy", "Fantasy"),
    "technology": (["Digital", "Quantum", "Robotic", "Cyber", "Smart", "Neural"],
                   ["Robot", "Computer", "Algorithm", "Circuit", "Android", "Code", "Network", "Machine", "Startup", "Laser"],
                   "Computers & Technology", "Techno-Thriller"),
}

BOOK_TEMPLATES = ["The {adj} {noun}: A Novel", "{noun} of the {noun2}", "The Last {noun}",
                  "A Short History of the {noun}", "{adj} {noun}s", "The {noun} and the {noun2}",
                  "Secrets of the {adj} {noun}", "The {noun} Handbook"]
MOVIE_TEMPLATES = ["{adj} {noun} ({year})", "Return of the {noun} ({year})", "The {noun} Chronicles ({year})",
                   "{noun}: {adj} Dawn ({year})", "Beyond the {noun} ({year})", "{noun} Rising ({year})",
                   "Night of the {noun} ({year})"]
PRODUCT_TYPES = ["Mug", "Apron", "Cookie Cutter Set", "Tea Towel", "Cutting Board", "Lunch Box", "Placemat Set",
                 "Water Bottle", "Baking Mold", "Oven Mitt", "Coaster Set", "Serving Tray"]
PRODUCT_TEMPLATES = ["{adj} {noun} {product}", "{noun} Print Ceramic {product}", "{noun} Themed {product}",
                     "{adj} {noun} Pattern {product}"]
MUSIC_TEMPLATES = ["{adj} {noun} (Album)", "Songs of the {noun}", "{noun} Sessions", "The {adj} {noun} EP"]
GAME_TEMPLATES = ["{noun} Quest: {adj} Edition", "{adj} {noun} Simulator", "Legends of the {noun}",
                  "{noun} Tactics"]
GENERIC_TEMPLATES = ["{adj} {noun} {domain_word}", "The {noun} {domain_word}", "{noun} and {noun2} {domain_word}"]


def _domain_style(domain: str) -> str:
    key = domain.lower()
    for style, words in {"books": ("book", "novel", "literature"), "movies": ("movie", "film", "video", "tv"),
                         "kitchen": ("kitchen", "home", "office", "craft", "art", "sewing"),
                         "music": ("music", "album", "song"), "games": ("game", "toy")}.items():
        if any(w in key for w in words):
            return style
    return "generic"


def _title(rng: np.random.Generator, style: str, theme: str, domain: str) -> tuple[str, str]:
    adjs, nouns, book_genre, movie_genre = THEMES[theme]
    noun, noun2 = rng.choice(nouns, size=2, replace=False)
    fields = {"adj": rng.choice(adjs), "noun": noun, "noun2": noun2, "year": int(rng.integers(1950, 2024)),
              "product": rng.choice(PRODUCT_TYPES), "domain_word": domain.rstrip("s").title()}
    if style == "books":
        return rng.choice(BOOK_TEMPLATES).format(**fields), f"Books > {book_genre}"
    if style == "movies":
        return rng.choice(MOVIE_TEMPLATES).format(**fields), f"Movies > {movie_genre}"
    if style == "kitchen":
        product = fields["product"]
        return rng.choice(PRODUCT_TEMPLATES).format(**fields), f"{domain.title()} > {product}"
    if style == "music":
        return rng.choice(MUSIC_TEMPLATES).format(**fields), f"Music > {movie_genre}"
    if style == "games":
        return rng.choice(GAME_TEMPLATES).format(**fields), "Games > Video Games"
    return rng.choice(GENERIC_TEMPLATES).format(**fields), domain.title()


def _catalogue(config: SynthConfig, rng: np.random.Generator) -> pd.DataFrame:
    themes = list(THEMES)
    n_domains = len(config.domains)
    per_domain = np.full(n_domains, config.n_items // n_domains)
    per_domain[: config.n_items % n_domains] += 1
    rows = []
    for domain, count in zip(config.domains, per_domain, strict=True):
        style = _domain_style(domain)
        seen: set[str] = set()
        for i in range(int(count)):
            theme = themes[i % len(themes)] if i < len(themes) else rng.choice(themes)
            for _ in range(20):  # retry for a fresh title
                title, categories = _title(rng, style, theme, domain)
                if title not in seen:
                    break
            else:
                title = f"{title}, Vol. {i}"
            seen.add(title)
            rows.append((domain, theme, title, categories))
    items = pd.DataFrame(rows, columns=[schema.DOMAIN, "theme", schema.TITLE, "categories"])
    prefix = {d: d[:2].upper() for d in config.domains}
    items[schema.ITEM_ID] = [f"{prefix[d]}{i:05d}" for i, d in enumerate(items[schema.DOMAIN])]
    # Zipf popularity inside each (domain, theme), in a random order of items.
    items["popularity"] = 0.0
    for _, index in items.groupby([schema.DOMAIN, "theme"]).groups.items():
        ranks = rng.permutation(len(index)) + 1
        items.loc[index, "popularity"] = 1.0 / ranks ** config.popularity_exponent
    return items[[schema.ITEM_ID, schema.DOMAIN, schema.TITLE, "categories", "theme", "popularity"]]


def _check_sizes(config: SynthConfig) -> None:
    if config.n_users < 1 or config.n_items < len(config.domains) or config.n_interactions < config.n_users:
        raise ValueError(
            f"synth sizes do not fit: n_users={config.n_users}, n_items={config.n_items}, "
            f"n_interactions={config.n_interactions}; need n_items >= number of domains "
            f"({len(config.domains)}) and n_interactions >= n_users")
    if len(set(config.domains)) != len(config.domains) or not config.domains:
        raise ValueError(f"synth domains must be distinct and non-empty, got {config.domains}")


class _Pools:
    """Per (domain, theme) and per domain (noise): item rows and their cumulative popularity,
    to draw an item of a domain (and theme) in proportion to its popularity."""

    def __init__(self, items: pd.DataFrame, config: SynthConfig):
        self.n_themes, self.n_domains = len(THEMES), len(config.domains)
        self.theme_index = items["theme"].map({t: i for i, t in enumerate(THEMES)}).to_numpy()
        domain_index = items[schema.DOMAIN].map({d: i for i, d in enumerate(config.domains)}).to_numpy()
        popularity = items["popularity"].to_numpy()

        def pool(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            idx = np.flatnonzero(mask)
            return idx, np.cumsum(popularity[idx]) / popularity[idx].sum()

        self.domain = [pool(domain_index == d) for d in range(self.n_domains)]
        self.theme = [[pool((domain_index == d) & (self.theme_index == t)) for t in range(self.n_themes)]
                      for d in range(self.n_domains)]

    @staticmethod
    def draw(cum: tuple[np.ndarray, np.ndarray], u: float) -> int:
        idx, c = cum
        if not len(idx):
            return -1
        return int(idx[min(np.searchsorted(c, u), len(idx) - 1)])


def _user_items(rng, config: SynthConfig, pools: _Pools, taste: np.ndarray, active: np.ndarray,
                active_p: np.ndarray) -> np.ndarray:
    """(n,) item rows of one user's history (``taste``: (n, themes) at each step), each item at
    most once: repeats are drawn again, a few times."""
    n, k = len(taste), len(active)
    chosen = np.empty(n, dtype=np.int64)
    seen: set[int] = set()
    for attempt in range(5):
        domains = active[rng.choice(k, size=n, p=active_p)]
        noise = rng.random(n) < config.noise
        theme = (taste.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1).clip(max=pools.n_themes - 1)
        pick = rng.random(n)
        for j in range(n):
            if attempt and chosen[j] >= 0:
                continue
            d = domains[j]
            item = -1 if noise[j] else pools.draw(pools.theme[d][theme[j]], pick[j])
            item = pools.draw(pools.domain[d], pick[j]) if item < 0 else item
            chosen[j] = -1 if item in seen and attempt < 4 else item
            if chosen[j] >= 0:
                seen.add(item)
        if (chosen >= 0).all():
            break
    return chosen


def generate(config: SynthConfig | None = None, *, progress: bool = False) -> Dataset:
    """The built-in dataset for ``config`` (same config and seed -> the same data)."""
    config = config or SynthConfig()
    _check_sizes(config)
    rng = np.random.default_rng(config.seed)
    items = _catalogue(config, rng)
    pools = _Pools(items, config)
    n_themes, n_domains = pools.n_themes, pools.n_domains
    # History lengths: log-normal, at least 5, summing to about n_interactions.
    raw = rng.lognormal(mean=0.0, sigma=0.7, size=config.n_users)
    lengths = np.maximum(5, np.round(raw / raw.sum() * config.n_interactions)).astype(int)
    domain_weights = np.linspace(1.5, 0.8, n_domains)  # some domains are busier
    start = pd.Timestamp("2022-01-01", tz="UTC").value // 10**9
    span = 3 * 365 * 86400
    user_ids, item_rows, times, ratings = [], [], [], []
    for u in tqdm(range(config.n_users), desc="synth users", disable=not progress, unit="user"):
        taste_start = rng.dirichlet(np.full(n_themes, config.taste_concentration))
        taste_end = (1 - config.drift) * taste_start + config.drift * rng.dirichlet(np.full(n_themes, config.taste_concentration))
        k = min(n_domains, 1 + rng.binomial(n_domains - 1, 0.6))
        active = rng.choice(n_domains, size=k, replace=False, p=domain_weights / domain_weights.sum())
        active_p = domain_weights[active] / domain_weights[active].sum()
        n = int(lengths[u])
        frac = np.arange(n)[:, None] / max(1, n - 1)
        taste = (1 - frac) * taste_start + frac * taste_end  # (n, themes)
        chosen = _user_items(rng, config, pools, taste, active, active_p)
        liking = taste[np.arange(n), pools.theme_index[chosen]] / taste.max(axis=1)
        user_ratings = np.clip(np.round(1.8 + 3.0 * liking + rng.normal(0, 0.7, size=n)), 1, 5)
        t0 = start + int(rng.integers(0, span // 2))
        gaps = rng.exponential(2 * 86400, size=n).astype(np.int64) + 60
        user_ids.extend([u] * n)
        item_rows.extend(chosen.tolist())
        ratings.extend(user_ratings.tolist())
        times.extend((t0 + np.cumsum(gaps)).tolist())

    item_rows = np.asarray(item_rows)
    interactions = pd.DataFrame({
        schema.USER_ID: [f"U{u:06d}" for u in user_ids],
        schema.ITEM_ID: items[schema.ITEM_ID].to_numpy()[item_rows],
        schema.DOMAIN: items[schema.DOMAIN].to_numpy()[item_rows],
        schema.TIMESTAMP: np.asarray(times, dtype=np.int64),
        schema.RATING: np.asarray(ratings, dtype=np.float64),
    })
    items = items.drop(columns=["popularity"]).reset_index(drop=True)
    return Dataset(interactions, items)
