"""The CSV source, `csv`: historical price files in any common layout, one checkpoint per file.

- `source`: CsvSource (files, their streams and checkpoints, batches), FileCoin, open_file;
- `layout`: what one file looks like (delimiter, banner, header, mapping, coin, formats);
- `columns`: which header is which price field (fuzzy names, currencies, volumes);
- `values`: cells as numbers and times, in the spellings that popular exports use;
- `rows`: one row into a PriceRecord, and what a bad row costs;
- `stream`: one file read from a byte offset, and the checkpoints that resume it;
- `dataset`: which provider or dataset a file comes from, the `<dataset>` of `csv:<dataset>`.
"""

from workers.sources.csv.source import (
    DEFAULT_BATCH_SIZE,
    CsvSource,
    FileCoin,
    dataset_on_disk,
    open_file,
    stream_key,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "CsvSource",
    "FileCoin",
    "dataset_on_disk",
    "open_file",
    "stream_key",
]
