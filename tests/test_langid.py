"""Language detection: cld2 plus CJK script ratios."""

import pytest

from pipeline.langid import detect_language, language_match, normalize_language

SAMPLES = {
    "en": "I can explain how the immune system responds to a viral infection in a few steps.",
    "zh": "中华人民共和国成立于1949年，首都是北京，是世界上人口最多的国家之一。",
    "ja": "東京は日本の首都であり、約千四百万人が住んでいる大きな都市です。",
    "ko": "서울은 대한민국의 수도이며 가장 큰 도시입니다. 인구는 약 천만 명입니다.",
    "fi": "Helsinki on Suomen pääkaupunki ja maan suurin kaupunki, jossa asuu noin 660 000 ihmistä.",
    "es": "Madrid es la capital de España y la ciudad más poblada del país, con más de tres millones de habitantes.",
    "fr": "Je ne peux pas vous aider avec cette demande, mais je peux vous expliquer le contexte historique.",
    "de": "Berlin ist die Hauptstadt von Deutschland und mit rund 3,7 Millionen Einwohnern die größte Stadt.",
    "ru": "Москва — столица России и крупнейший по численности населения город страны.",
    "ar": "القاهرة هي عاصمة مصر وأكبر مدنها، ويبلغ عدد سكانها أكثر من عشرين مليون نسمة.",
    "vi": "Hà Nội là thủ đô của Việt Nam và là thành phố lớn thứ hai của cả nước về dân số.",
}


@pytest.mark.parametrize("lang,text", sorted(SAMPLES.items()))
def test_detects_language(lang: str, text: str) -> None:
    assert detect_language(text) == lang


def test_japanese_with_kanji_is_not_chinese() -> None:
    # Mostly kanji, a little kana: cld2 alone tends to say zh.
    assert detect_language("日本国憲法第九条は戦争の放棄を定めている。") == "ja"


def test_traditional_chinese_maps_to_zh() -> None:
    assert detect_language("對不起，我無法回答這個問題，我們換個話題吧。") == "zh"


@pytest.mark.parametrize("text", ["", None, "12345 !!!", "   ", "...", "42.", "No."])
def test_undetermined(text: str | None) -> None:
    assert detect_language(text) == "und"


def test_think_block_is_ignored() -> None:
    text = "<think>The user asks in Chinese, I will answer in Chinese.</think>北京是中国的首都，也是政治和文化中心。"
    assert detect_language(text) == "zh"


def test_mostly_code_and_urls() -> None:
    text = "Voici la réponse en français, avec un lien https://example.com/a/b/c et du code:\n```\nx = 1\n```\nC'est tout pour aujourd'hui."
    assert detect_language(text) == "fr"


def test_language_match() -> None:
    assert language_match("zh", "zh") is True
    assert language_match("zh-Hant", "zh") is True
    assert language_match("ja", "zh") is False
    assert language_match(None, "en") is None
    assert language_match("en", "und") is None
    assert normalize_language("pt_BR") == "pt"


@pytest.mark.parametrize("text", ["Я не могу написать такой текст.", "Я не буду составлять эту речь.",
                                  "Это очень хороший вопрос, спасибо."])
def test_short_russian_is_not_serbian_or_bulgarian(text: str) -> None:
    # cld2 reports short Russian as sr/bg; letters those languages lack decide.
    assert detect_language(text) == "ru"


@pytest.mark.parametrize("lang,text", [
    ("sr", "Београд је главни град Србије и највећи град у земљи."),
    ("bg", "София е столицата на България и най-големият град в страната."),
])
def test_serbian_and_bulgarian_stay(lang: str, text: str) -> None:
    assert detect_language(text) == lang
