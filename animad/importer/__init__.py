"""`animad import`: sd-scripts files in, a job folder out.

A side room of its own: it reads what users bring from sd-scripts (launch files, --config_file and
dataset TOMLs) and writes a job folder that intake then checks like any other. It sits above
`intake/` (it checks what it writes, and knows which files are images) and only `cli/` imports it.

  read.py       the files as sd-scripts would have seen them: flags and dataset subsets, with origins
  flags.py      every option of sd-scripts' Anima trainer: its type, and why an unmapped one is left out
  translate.py  flags -> job.yaml entries, unmapped flags with their reasons, problems
  write.py      job.yaml (each line commented) and IMPORT.txt
  folder.py     the job folder: copying image_dirs verified, the model set, writing last

The table of sd-scripts/kohya_ss names -> job.yaml keys stays in config/aliases.py: the job.yaml
parser's "this is sd-scripts' X; here it is Y" hints read it too, and config/ is below this package.
"""
