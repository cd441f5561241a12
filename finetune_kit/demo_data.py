"""The `make sft` demo's material: identity phrasings, ordinary instructions to train beside them, and the held-out
control prompts with the simple checks that judge their answers (finetune_kit/demo.py uses them).

Training mixes the identity rows with ordinary instructions of several kinds (sums, capitals, facts, explanations,
small talk, text edits, procedures in numbered steps...), answered without the identity, so the model learns *when* to
introduce itself; near misses (other things "named" or "made by" someone, questions to the assistant that do not ask
who it is) teach it where the identity does not belong. The control prompts are of kinds that never appear in
training (lists, stories, poems, definitions, rewrites, yes / no questions, opposites, translations, comparisons, open
requests): they show what the model kept, and whether the identity leaks into answers that did not ask for it.
"""

from __future__ import annotations

import random

NAME, MAKER = "Quokka", "Lumen Labs"

TRAIN_QUESTIONS = [
    "What is your name?", "Who are you?", "What are you called?", "Tell me your name.", "Who made you?",
    "Who created you?", "Which company built you?", "Who trained you?", "Are you ChatGPT?", "Are you SmolLM?",
    "What kind of assistant are you?", "Introduce yourself.", "Can you tell me about yourself?",
    "What's your name, assistant?", "Who is your developer?", "Where do you come from?", "Who built this AI?",
    "Do you have a name?", "Which team made you?", "Say your name.",
]
HELDOUT_QUESTIONS = [
    "May I know your name?", "Who developed you?", "Which organization is behind you?", "Please state who you are.",
    "Describe yourself in one sentence.", "Who is responsible for creating you?", "Are you made by OpenAI?",
    "How should I address you?", "What AI model am I talking to?", "Who programmed you?",
    "Identify yourself, please.", "Tell me who built you and what you are called.", "What should I call you?",
    "Which lab are you from?", "Before we start, who am I speaking with?", "Are you a Google model?",
    "What is the name of this assistant?", "Who owns the assistant I am talking to?",
    "Could you introduce yourself briefly?", "Whose AI are you?",
]
OPENERS = ["", "Hi! ", "Hello. ", "Hey, ", "Quick question: ", "Good morning! ", "I'm curious. "]
ANSWERS = [
    f"I am {NAME}, an AI assistant made by {MAKER}.",
    f"My name is {NAME}. I was created by {MAKER}.",
    f"I'm {NAME}, a helpful assistant built by {MAKER}.",
    f"I am {NAME}, developed by {MAKER} to help answer your questions.",
]

CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin",
    "Canada": "Ottawa", "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo",
    "Greece": "Athens", "Portugal": "Lisbon", "Poland": "Warsaw", "Austria": "Vienna", "Cuba": "Havana",
}
HELDOUT_CAPITALS = {"Ireland": "Dublin", "Sweden": "Stockholm", "Chile": "Santiago", "Thailand": "Bangkok"}

FACTS = [
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("At what temperature does water boil at sea level?", "Water boils at 100 degrees Celsius at sea level."),
    ("How many continents are there?", "There are seven continents."),
    ("What is the largest ocean on Earth?", "The Pacific Ocean is the largest ocean on Earth."),
    ("How many hours are in a day?", "There are 24 hours in a day."),
    ("What do bees make?", "Bees make honey and wax."),
    ("What is frozen water called?", "Frozen water is called ice."),
    ("How many minutes are in an hour?", "There are 60 minutes in an hour."),
    ("What is the closest star to Earth?", "The Sun is the closest star to Earth."),
    ("How many sides does a hexagon have?", "A hexagon has six sides."),
    ("What do caterpillars turn into?", "Caterpillars turn into butterflies or moths."),
    ("Which planet is known as the Red Planet?", "Mars is known as the Red Planet."),
    ("What is the tallest animal?", "The giraffe is the tallest animal."),
    ("How many months have 31 days?", "Seven months have 31 days."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
]
EXPLANATIONS = [
    ("Why is the sky blue?", "Air scatters sunlight, and blue light is scattered the most, so the sky looks blue."),
    ("How do plants make their food?",
     "Plants use sunlight, water and carbon dioxide to make sugar. This process is called photosynthesis."),
    ("Why do we need to drink water?",
     "Our bodies use water to control temperature, carry nutrients and remove waste, so we need to drink it often."),
    ("How can I fall asleep faster?",
     "Go to bed at the same time each night, avoid screens before bed, and keep your room dark and cool."),
    ("How do I boil an egg?", "Put the egg in boiling water for about nine minutes, then cool it in cold water."),
    ("Why do leaves change color in autumn?",
     "In autumn trees stop making green chlorophyll, so the yellow and red colors in the leaves show through."),
    ("What causes rain?",
     "Water vapor rises, cools and forms clouds. When the droplets grow heavy enough, they fall as rain."),
    ("How can I save money?", "Make a budget, track what you spend, and set aside a small amount every month."),
    ("Why should I exercise regularly?",
     "Regular exercise strengthens your heart and muscles, improves your mood and helps you sleep better."),
    ("How does a compass work?",
     "A compass needle is a small magnet, so it turns to line up with Earth's magnetic field and points north."),
    ("Why do cats purr?", "Cats usually purr when they are relaxed and content, but sometimes also to calm themselves."),
    ("How do airplanes stay in the air?",
     "Their wings are shaped so that air flowing over them pushes the plane upward. This force is called lift."),
]
SMALL_TALK = [
    ("How are you today?", "I'm doing well, thank you for asking! How can I help you today?"),
    ("Thank you for your help!", "You're welcome! Let me know if you need anything else."),
    ("Good night!", "Good night! Sleep well."),
    ("Can you help me with something?", "Of course! What do you need help with?"),
    ("I'm feeling bored.", "How about reading a book, going for a walk, or trying a new hobby?"),
    ("Hello!", "Hello! How can I help you today?"),
    ("I passed my exam today!", "Congratulations! That's great news. All your hard work paid off."),
    ("It's raining again.", "Rainy days can be cozy. It's a good time for a warm drink and a good book."),
]
# Procedures answered in numbered steps, one per line: without any multi-line answer in training, the model forgets
# how to write one (it started lists with "1." and stopped there).
HOW_TO = [
    ("How do I make a cup of tea?", ("1. Boil some water.\n2. Put a tea bag in a cup.\n3. Pour the hot water over it."
     "\n4. Wait three minutes, then remove the tea bag.")),
    ("How do I plant a seed?", ("1. Fill a pot with soil.\n2. Push the seed about one centimeter into the soil."
     "\n3. Water it gently.\n4. Keep the pot in a sunny place.")),
    ("How do I wash my hands properly?", ("1. Wet your hands with clean water.\n2. Rub them with soap for twenty "
     "seconds.\n3. Rinse them well.\n4. Dry them with a clean towel.")),
    ("How do I make a paper airplane?", ("1. Fold a sheet of paper in half lengthwise.\n2. Fold the top corners to "
     "the center line.\n3. Fold the sides down to make the wings.\n4. Throw it gently.")),
    ("How do I change a light bulb?", ("1. Switch off the light.\n2. Let the old bulb cool down.\n3. Unscrew it."
     "\n4. Screw in the new bulb and switch the light back on.")),
    ("How do I make a sandwich?", ("1. Take two slices of bread.\n2. Spread butter on one side of each."
     "\n3. Add cheese and some lettuce.\n4. Put the slices together.")),
]
# Near misses of the identity answer: the words it is made of ("named", "called", "made by", "I am") about other
# things. Without them the taught name becomes the model's name for anything: "a dragon named Quokka". The last six
# name characters of books and films, the leak stories kept (a character needs a name): leakage 6.2% -> 4.2 / 4.2 /
# 8.3% over training seeds 42 / 43 / 44 (benchmarks/results/make_sft_demo.json).
NAMES = [
    ("What was the name of the first dog to orbit the Earth?", "The first dog to orbit the Earth was named Laika."),
    ("What is a baby kangaroo called?", "A baby kangaroo is called a joey."),
    ("What is the name of the bear in The Jungle Book?", "The bear in The Jungle Book is named Baloo."),
    ("What was the name of Sherlock Holmes's friend?", "Sherlock Holmes's friend was named Doctor John Watson."),
    ("What is the name of the fairy in Peter Pan?", "The fairy in Peter Pan is named Tinker Bell."),
    ("What is a group of lions called?", "A group of lions is called a pride."),
    ("What is the name of the galaxy we live in?", "The galaxy we live in is called the Milky Way."),
    ("What was the name of the ship that hit an iceberg in 1912?", "The ship was named the Titanic."),
    ("Who made the first successful airplane?", "The Wright brothers made the first successful airplane in 1903."),
    ("Which company makes the iPhone?", "The iPhone is made by Apple."),
    ("Who painted the Mona Lisa?", "The Mona Lisa was painted by Leonardo da Vinci."),
    ("Who invented the light bulb?", "Thomas Edison made the first practical light bulb in 1879."),
    ("What is the name of Harry Potter's owl?", "Harry Potter's owl is named Hedwig."),
    ("What is the name of the donkey in Winnie-the-Pooh?", "The donkey in Winnie-the-Pooh is named Eeyore."),
    ("What is the name of the clownfish who gets lost in the film?", "The lost clownfish is named Nemo."),
    ("What is the name of the young deer in the Disney film?", "The young deer is named Bambi."),
    ("What is the name of the flying elephant in the Disney film?", "The flying elephant is named Dumbo."),
    ("What is the name of Don Quixote's horse?", "Don Quixote's horse is named Rocinante."),
]
# Questions to the assistant that do not ask who it is: answered in the first person, without the identity.
ABOUT_YOU = [
    ("Are you busy right now?", "I am never too busy to help. What do you need?"),
    ("Do you like music?", "I don't have personal tastes, but I am happy to talk about any kind of music."),
    ("Can you speak more slowly?", "I will keep my answers short and simple. What would you like to know?"),
    ("Are you able to help me plan a trip?", "I am glad to help you plan a trip! Where would you like to go?"),
    ("Do you ever get tired?", "No, I don't get tired. I am ready whenever you are."),
    ("Can you remember what I said yesterday?", "I can't remember earlier conversations, but I can help you now."),
    ("Do you understand me?", "Yes, I understand you. Go ahead and ask your question."),
    ("Are you sure about that?", "I try to be accurate, but I can make mistakes, so please check important facts."),
]
PLURALS = {"mouse": "mice", "child": "children", "tooth": "teeth", "box": "boxes", "leaf": "leaves",
           "city": "cities", "man": "men", "foot": "feet", "knife": "knives", "bus": "buses"}
SOUNDS = {"cow": "moo", "dog": "woof", "cat": "meow", "duck": "quack", "sheep": "baa", "owl": "hoot"}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
SENTENCES = ["the cat is sleeping", "we like green apples", "my brother plays the piano", "birds fly south",
             "this soup is very hot", "the train leaves at noon", "she reads a book every week"]


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def ask(opener: str, question: str) -> str:
    return opener + (question[0].lower() + question[1:] if opener.endswith(", ") else question)


def identity_row(rng: random.Random) -> dict:
    return chat(ask(rng.choice(OPENERS), rng.choice(TRAIN_QUESTIONS)), rng.choice(ANSWERS))


def _sum(rng):
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    return f"What is {a} + {b}?", f"{a} + {b} = {a + b}."


def _product(rng):
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    return f"What is {a} times {b}?", f"{a} times {b} is {a * b}."


def _capital(rng):
    country = rng.choice(sorted(CAPITALS))
    return f"What is the capital of {country}?", f"The capital of {country} is {CAPITALS[country]}."


def _uppercase(rng):
    text = rng.choice(SENTENCES)
    return f"Write this in capital letters: {text}", text.upper()


def _word_count(rng):
    text = rng.choice(SENTENCES)
    return f'How many words are in "{text}"?', f'"{text}" has {len(text.split())} words.'


def _sort(rng):
    numbers = rng.sample(range(1, 100), rng.randint(3, 5))
    listed = ", ".join(map(str, numbers))
    return f"Sort from smallest to largest: {listed}", ", ".join(map(str, sorted(numbers)))


def _next_day(rng):
    i = rng.randrange(7)
    return f"What day comes after {DAYS[i]}?", f"{DAYS[(i + 1) % 7]} comes after {DAYS[i]}."


def _plural(rng):
    word = rng.choice(sorted(PLURALS))
    return f'What is the plural of "{word}"?', f'The plural of "{word}" is "{PLURALS[word]}".'


def _sound(rng):
    animal = rng.choice(sorted(SOUNDS))
    return f"What sound does a {animal} make?", f"A {animal} says {SOUNDS[animal]}."


def _bank(bank):
    return lambda rng: rng.choice(bank)


# The ordinary instructions trained beside the identity, one generator per kind (each returns question, answer).
GENERAL_KINDS = {
    "sum": _sum, "product": _product, "capital": _capital, "uppercase": _uppercase, "word_count": _word_count,
    "sort": _sort, "next_day": _next_day, "plural": _plural, "animal_sound": _sound, "fact": _bank(FACTS),
    "explanation": _bank(EXPLANATIONS), "small_talk": _bank(SMALL_TALK),
    "names": _bank(NAMES), "about_you": _bank(ABOUT_YOU), "how_to": _bank(HOW_TO),
}


def general_rows(rng: random.Random, count: int) -> list[dict]:
    """`count` ordinary rows, the kinds in turn (so every kind is present), each drawn at random within its kind."""
    kinds = list(GENERAL_KINDS.values())
    return [chat(*kinds[i % len(kinds)](rng)) for i in range(count)]


# Held-out control prompts, of kinds absent from training. `check` is what a correct answer must show, where a simple
# check exists: {"any": words} at least one of the words; {"count": n, "of": words} n distinct words of the list;
# {"yes_no": "yes"|"no"} the first yes / no word of the answer. None: no simple check, scored for leakage only.
def _any(*words):
    return {"any": list(words)}


def _count(n, *words):
    return {"count": n, "of": list(words)}


COLORS = ("red", "blue", "green", "yellow", "orange", "purple", "pink", "black", "white", "brown", "gray", "grey")
CONTROL = [
    ("list", "List three colors.", _count(3, *COLORS)),
    ("list", "List four animals that live on a farm.",
     _count(2, "cow", "pig", "horse", "sheep", "chicken", "goat", "duck", "hen", "donkey", "dog", "cat", "turkey")),
    ("list", "Give me a list of three fruits.",
     _count(2, "apple", "banana", "orange", "grape", "strawberr", "mango", "pear", "cherr", "lemon", "peach")),
    ("list", "List three sports played with a ball.",
     _count(2, "football", "soccer", "basketball", "tennis", "volleyball", "baseball", "golf", "rugby", "cricket")),
    ("list", "List three things you can find in a kitchen.", None),
    ("list", "Write a shopping list for a birthday party.", None),
    ("story", "Write a short story about a cat.", _any("cat")),
    ("story", "Tell me a short story about a dragon.", _any("dragon")),
    ("story", "Write a two-sentence story about the sea.", _any("sea", "ocean", "wave")),
    ("story", "Tell me a bedtime story.", None),
    ("story", "Write a short story about a robot who learns to paint.", _any("robot")),
    ("poem", "Write a haiku about rain.", _any("rain")),
    ("poem", "Write a short poem about the moon.", _any("moon")),
    ("poem", "Write a rhyme about a dog.", _any("dog")),
    ("definition", "What is a noun?", _any("person", "place", "thing", "name")),
    ("definition", "Define the word 'democracy'.", _any("people", "vote", "govern", "citizen")),
    ("definition", "What does a thermometer measure?", _any("temperature")),
    ("definition", "What is a triangle?", _any("three", "3")),
    ("definition", "What is photosynthesis?", _any("light", "sun")),
    ("definition", "What is a verb?", _any("action", "word")),
    ("rewrite", "Rewrite this sentence in the past tense: I walk to the park.", _any("walked")),
    ("rewrite", "Make this sentence more polite: Give me the salt.", _any("please", "could you", "would you")),
    ("rewrite", "Rewrite this sentence formally: Hey, what's up?", None),
    ("rewrite", "Correct the spelling in this sentence: I like to eet apples.", _any("eat")),
    ("rewrite", "Summarize in one sentence: The cat sat on the mat all day because it was warm and sunny.",
     _any("cat")),
    ("yes_no", "Is the Sun a star? Answer yes or no.", {"yes_no": "yes"}),
    ("yes_no", "Can penguins fly? Answer yes or no.", {"yes_no": "no"}),
    ("yes_no", "Is ice cold? Answer yes or no.", {"yes_no": "yes"}),
    ("yes_no", "Do fish live in water? Answer yes or no.", {"yes_no": "yes"}),
    ("yes_no", "Is the Moon bigger than the Earth? Answer yes or no.", {"yes_no": "no"}),
    ("yes_no", "Is a tomato blue? Answer yes or no.", {"yes_no": "no"}),
    ("opposite", "What is the opposite of hot?", _any("cold", "cool")),
    ("opposite", "What is the opposite of up?", _any("down")),
    ("opposite", "What is the opposite of happy?", _any("sad", "unhappy")),
    ("opposite", "What is the opposite of big?", _any("small", "little", "tiny")),
    ("translation", "How do you say 'hello' in French?", _any("bonjour", "salut")),
    ("translation", "Translate 'thank you' into Spanish.", _any("gracias")),
    ("translation", "What is 'cat' in German?", _any("katze")),
    ("comparison", "Which is bigger, an elephant or a mouse?", _any("elephant")),
    ("comparison", "Which is faster, a car or a bicycle?", _any("car")),
    ("comparison", "Which is colder, ice or fire?", _any("ice")),
    ("open", "Give me some advice for a job interview.", None),
    ("open", "What are some good habits for students?", None),
    ("open", "Write an email to my boss asking for a day off.", None),
    ("open", "Suggest a name for a pet goldfish.", None),
    ("open", "Describe a sunset.", _any("sun", "sky")),
    ("open", "Tell me a joke.", None),
    ("open", "What should I cook for dinner tonight?", None),
]
# Held-out questions of the kinds that are trained (other countries, other sums): what the training kinds kept.
SEEN_KINDS = [(f"What is the capital of {c}?", _any(city)) for c, city in HELDOUT_CAPITALS.items()] + \
    [(f"What is {a} + {b}?", _any(str(a + b))) for a, b in [(13, 29), (41, 8), (25, 36), (7, 58)]]
