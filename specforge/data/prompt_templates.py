"""The wording of the prompts :mod:`specforge.data.prompts` builds: several templates per kind.

Contract: every kind in :data:`KINDS` has a weight (its share of a split before redistribution) and
its templates here; a template is a ``str.format`` pattern over the fields its kind fills. The
templates only ask; none states a fact, so a prompt never teaches anything false.
"""

from __future__ import annotations

KINDS = (
    "complete",
    "explain_function",
    "docstring_task",
    "howto",
    "debug",
    "refactor",
    "explain_module",
    "concept",
    "general",
)
WEIGHTS = {
    "complete": 0.15,
    "explain_function": 0.13,
    "docstring_task": 0.13,
    "howto": 0.12,
    "debug": 0.09,
    "refactor": 0.10,
    "explain_module": 0.08,
    "concept": 0.13,
    "general": 0.07,
}

# {module}, {name}, {header}: signature and docstring of a function; the body is what is asked for.
COMPLETE = (
    "Complete this function from `{module}`:\n```python\n{header}\n```",
    "Implement the body of the following Python function:\n```python\n{header}\n```",
    "Here is a function signature and docstring. Write the code.\n\n```python\n{header}\n```",
    "Write the implementation of `{name}` given its docstring:\n```python\n{header}\n```",
    "```python\n{header}\n```\nFinish this function.",
    "Can you write the body of `{name}`? Signature and docstring:\n```python\n{header}\n```",
    "Fill in the missing code so this function does what its docstring says:\n```python\n{header}\n```",
    "I'm writing `{name}` for a module like `{module}`. Please implement it:\n```python\n{header}\n```",
)
# {module}, {name}, {code}: a function without its docstring.
EXPLAIN_FUNCTION = (
    "Explain what `{name}` in `{module}` does:\n```python\n{code}\n```",
    "What does this Python function do?\n```python\n{code}\n```",
    "Walk me through this code step by step:\n```python\n{code}\n```",
    "```python\n{code}\n```\nSummarize what this function does in a few sentences.",
    "Can you describe the purpose of this function and what it returns?\n```python\n{code}\n```",
    "Explain this function from the `{module}` module to a beginner:\n```python\n{code}\n```",
    "Write a docstring for this function:\n```python\n{code}\n```",
    "What inputs does `{name}` expect, and what does it give back?\n```python\n{code}\n```",
)
# {task}: a docstring's first sentence in the third person ("returns the ..."); {name}, {signature}.
DOCSTRING_TASK = (
    "Write a Python function that {task}.",
    "Implement a function `{name}` that {task}.",
    "Write a small Python function which {task}. Include a docstring.",
    "Create a Python function that {task}, and show an example call.",
    "I need a helper function that {task}. Can you write it?",
    "Using only the standard library, write code that {task}.",
    "Write `{signature}` so that it {task}.",
    "Write a Python function that {task}. Keep it short and readable.",
)
# {task}: a docstring's first sentence in the base form ("get the ..."); {module}.
HOWTO = (
    "How do I {task} in Python?",
    "How can I {task} using the `{module}` module?",
    "What's the simplest way to {task} in Python?",
    "In Python, how would I {task}?",
    "I want to {task}. How should I do it in Python?",
    "Is there a standard-library way to {task}?",
    "Show me how to {task} in Python, with a short example.",
    "Quick question: how do you {task} in Python?",
)
# {code}: a function in which exactly one token was changed (so it does have a bug); {task} optional.
DEBUG = (
    "This function has a bug. Find it and fix it:\n```python\n{code}\n```",
    "One token in this function was changed and now it misbehaves. Which line is wrong, and what should it "
    "be?\n```python\n{code}\n```",
    "Find the mistake in this Python code and explain why it is wrong:\n```python\n{code}\n```",
    "Can you debug this? There is one small error somewhere in it.\n```python\n{code}\n```",
    "```python\n{code}\n```\nThis code contains a bug. Point it out and give the corrected version.",
)
DEBUG_WITH_TASK = (
    "This function is supposed to {task}, but it has a bug. Fix it:\n```python\n{code}\n```",
    "`{name}` should {task}. One token in it is wrong; find it and correct it.\n```python\n{code}\n```",
)
# {code}: a short function; {name}.
REFACTOR = (
    "Refactor this function to make it easier to read:\n```python\n{code}\n```",
    "Add type hints to this function:\n```python\n{code}\n```",
    "Write pytest unit tests for this function:\n```python\n{code}\n```",
    "Review this code. Are there edge cases it does not handle?\n```python\n{code}\n```",
    "Can this function be simplified? Show an improved version.\n```python\n{code}\n```",
    "Rewrite `{name}` in a more modern Python style:\n```python\n{code}\n```",
    "Add comments explaining each step of this function:\n```python\n{code}\n```",
    "How could I make this function faster, if at all?\n```python\n{code}\n```",
    "Rename the variables in `{name}` to be more descriptive:\n```python\n{code}\n```",
)
# {module}; {doc}: the first paragraph of the module's docstring.
EXPLAIN_MODULE = (
    "What is the `{module}` module in the Python standard library used for?",
    "When would I reach for the `{module}` module in Python?",
    "Give me a quick overview of Python's `{module}` module.",
    "I found `import {module}` in some code. What does that module provide?",
)
EXPLAIN_MODULE_DOC = (
    'Here is the docstring of Python\'s `{module}` module:\n\n"""{doc}"""\n\nIn two or three sentences, '
    "what is this module for?",
    "Based on this description, explain what `{module}` does and give one use case:\n\n{doc}",
    "Summarize this module documentation in plain English:\n\n{doc}",
    "The `{module}` module describes itself like this:\n\n{doc}\n\nWhat kind of program would use it?",
)
# {x}: a language topic or section title ("the `with` statement", "mutable sequence types").
CONCEPT = (
    "Explain {x} in Python.",
    "What should I know about {x} in Python?",
    "Can you give me an overview of {x} in Python?",
    "I'm learning Python. Could you explain {x} with a simple example?",
    "Give a short example that illustrates {x} in Python.",
    "What are common mistakes beginners make with {x} in Python?",
    "Describe {x} in Python in a few sentences.",
    "Summarize the key rules of {x} in Python.",
)
# {k}: a keyword.
KEYWORD = (
    "What does the `{k}` keyword do in Python?",
    "When should I use `{k}` in Python?",
    "Show me a small example that uses the `{k}` keyword.",
    "Explain the `{k}` keyword in Python to a beginner.",
    "Is `{k}` a statement, an operator or something else in Python? Explain how it is used.",
)
# {s}: a symbol or operator.
SYMBOL = (
    "What does `{s}` mean in Python?",
    "How is the `{s}` symbol used in Python code?",
    "Give examples of where `{s}` appears in Python syntax.",
    "What does the `{s}` operator do in Python? Give an example.",
)
# {m}: a method or built-in ("str.zfill()", "object.__enter__()", "zip()").
METHOD = (
    "What does `{m}` do in Python?",
    "Explain `{m}` with an example.",
    "When would I call `{m}`?",
    "How is `{m}` used? Show a short example.",
    "What does `{m}` return, and what arguments does it take?",
)
# {a}, {b}: two related things.
DIFFERENCE = (
    "What is the difference between {a} and {b} in Python?",
    "Explain the difference between {a} and {b}.",
    "When would I use {a} instead of {b}?",
    "{a} vs {b} in Python: how do they differ?",
    "Compare {a} and {b} in Python, with a short example of each.",
)
DIFFERENCE_PAIRS = (
    ("`list`", "`tuple`"),
    ("`set`", "`frozenset`"),
    ("`bytes`", "`bytearray`"),
    ("`is`", "`==`"),
    ("`list`", "`set`"),
    ("`dict`", "`list`"),
    ("`str`", "`bytes`"),
    ("`int`", "`float`"),
    ("`/`", "`//`"),
    ("`break`", "`continue`"),
    ("`return`", "`yield`"),
    ("`global`", "`nonlocal`"),
    ("`repr()`", "`str()`"),
    ("`sorted()`", "`list.sort()`"),
    ("`append()`", "`extend()` on a list"),
    ("`range()`", "a list of numbers"),
    ("`__str__`", "`__repr__`"),
    ("`__new__`", "`__init__`"),
    ("a generator", "a list comprehension"),
    ("`staticmethod`", "`classmethod`"),
)
# {w}: a word taken from standard-library docstrings. Questions about the word only, never claims.
GENERAL = (
    'Write a four-line poem inspired by the word "{w}".',
    'Write a haiku inspired by the word "{w}".',
    'Give me three creative podcast names that play on the word "{w}".',
    'List five words that are related to "{w}".',
    'Write a riddle whose answer is "{w}".',
    'Explain the everyday meaning of the word "{w}" to a ten-year-old.',
    'Write a two-sentence story that uses the word "{w}".',
    'Write a limerick that ends with the word "{w}".',
    'Translate the word "{w}" into French, Spanish and German.',
    'Use the word "{w}" in three different example sentences.',
    'What are some synonyms for "{w}"?',
    'Write a short dialogue between two friends in which one of them says "{w}".',
    'Is "{w}" a noun, a verb or an adjective? Give an example sentence.',
    'Write a short product description for an imaginary app called "{W}".',
    'Write a friendly one-paragraph email to a colleague that mentions the word "{w}".',
    'Where does the English word "{w}" come from? Answer briefly.',
)
# Words too common in docstrings to make an interesting general prompt.
GENERAL_STOPWORDS = frozenset(
    """module modules support supports class classes implementation implements implement function
    functions package related based using library provides write version interface interfaces according
    specific useful available which build built other between should found thereto needed various defined
    object objects types parse print compile simple oriented multi level shared custom generate these those
    their there about given generic general routines utility utilities method methods python pythons
    helper within where while whose would could being after before under into from with that this""".split()
)
# Verbs a docstring's first sentence may start with (base form) for the docstring and how-to kinds.
VERBS = frozenset(
    """return get set compute calculate convert create make build parse read write find check test
    determine generate format encode decode remove delete add insert append extract split join copy move
    open close load save send receive print display apply update replace wrap strip escape quote unquote
    normalize normalise validate compare sort search match scan count construct initialize initialise
    register handle process emit flush reset clear resolve translate transform map filter collect iterate
    run execute start stop wait acquire release compress decompress hash pack unpack serialize render
    look locate list expand evaluate choose pick shuffle fetch retrieve download upload trim pad truncate
    round configure tokenize merge combine concatenate detect verify ensure fill dump peek push pop store
    subtract multiply divide skip consume accept bind connect listen terminate kill spawn schedule cancel
    unescape interpret advance disassemble inspect walk traverse visit do raise produce prepare strip
    truncate fix shift rotate select reverse sum reduce measure estimate""".split()
)
