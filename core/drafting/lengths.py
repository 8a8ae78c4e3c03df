"""Draft lengths, named once: the runtime's limit, auto's search bound, and what exports write.

Every flag check (`--draft`, `--depth`), every export's draft setting and the auto policy read
these; a length written anywhere else is a bug.
"""

from __future__ import annotations

#: Largest draft length the runtime accepts (also the number of recurrent-state snapshots a target
#: context keeps, so a verify batch can be rolled back past any rejected draft).
MAX_DRAFT = 8
#: The longest draft `--draft auto` considers: deeper drafts rarely pay (each depth multiplies the
#: chance of a rejection), and every length it considers costs exploration steps; an auto target
#: context keeps this many recurrent-state snapshots.
AUTO_MAX_DRAFT = 4
#: The draft length an export writes when `qwythos bench` has measured nothing for the file on this
#: machine: llama.cpp's MTP work measured ~75% acceptance at 3 drafts (#22673), and 4+ is often
#: slower than 2-3 (ECOSYSTEM_FACTS).
DEFAULT_DRAFT = 3
