"""The docs: commands in README.md, docs/ and the READMEs compose, tools answer --help, the site builds."""
