"""Default English sentences for the synthetic subject: varied vowels, many bilabials."""

SENTENCES = [
    "Bob bought a big map of the mountains.",
    "Please pass me the warm apple pie.",
    "My mother makes amazing bread every morning.",
    "The quick brown fox jumps over the lazy dog.",
    "We often walk by the open harbour at dawn.",
    "Peter painted a purple boat in the park.",
    "How about a cup of hot cocoa after lunch?",
    "Five wise owls flew over the quiet valley.",
    "Maybe the moon will be bright tomorrow night.",
    "She sells sea shells by the sea shore.",
    "A bumble bee buzzed above the blue flowers.",
    "I would like to book a room for two people.",
    "Open the window, please, it is warm in here.",
    "Many mobile phones can play music and movies.",
    "The old man bought a bamboo umbrella.",
    "Good food and music make people happy.",
    "Every weekend we ride our bikes to the beach.",
    "Her brother plays the piano beautifully.",
    "Put the map back in the brown box.",
    "You can see the whole city from the top of the hill.",
]
