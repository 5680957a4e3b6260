import sys
from pathlib import Path

# tests/reference.py is a helper module, imported as `reference`.
sys.path.insert(0, str(Path(__file__).resolve().parent))
