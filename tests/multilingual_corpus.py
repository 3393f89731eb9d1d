"""Ordinary multi-paragraph documents in English, Chinese, Japanese and Thai, on the same everyday
topics (a town, a recipe, a research result, a memory, software documentation), for checking that
the curation rules keep text without spaces between words as readily as English."""

EN = [
    "The old harbour town lies at the mouth of a wide river, and for centuries its life has turned around the "
    "fishing boats that leave before sunrise. The houses along the quay are painted in bright colours so that "
    "sailors could recognise their homes from the sea.\n\n"
    "In the nineteenth century a railway line reached the town, and with it came the first visitors from the "
    "capital. Hotels were built on the cliffs, and a long promenade was laid out where families walked on Sunday "
    "afternoons.\n\n"
    "Today the harbour is quieter. A small museum tells the story of the fishermen, and in summer a festival "
    "fills the streets with music, grilled sardines and boats decorated with flowers.",
    "Making good bread at home needs only flour, water, salt and yeast, but it takes patience. Mix the ingredients "
    "into a rough dough and let it rest for half an hour before kneading, so that the flour can absorb the water.\n\n"
    "Knead for about ten minutes until the dough is smooth and springs back when pressed. Cover the bowl and leave "
    "it in a warm place until it has doubled in size, which usually takes one to two hours.\n\n"
    "Shape the loaf gently, place it on a floured tray and bake it in a very hot oven. The bread is ready when the "
    "crust is deep brown and the bottom sounds hollow when tapped. Let it cool before slicing.",
    "Researchers at the university have spent three years studying how bees find flowers in cities. They fitted "
    "tiny radio tags to hundreds of bees and followed their flights between parks, gardens and balconies.\n\n"
    "The results surprised the team. Bees in the city centre travelled shorter distances than bees in the "
    "countryside, because the many small gardens offered a steady supply of different flowers from spring until "
    "late autumn.\n\n"
    "The scientists now recommend that local councils plant more native flowers along streets and roofs. Even a "
    "few square metres, they say, can make a real difference to the health of a colony.",
    "My grandmother grew up on a farm far from any town. Every morning before school she fed the chickens and "
    "carried water from the well, and in the evening she helped her mother prepare dinner for the whole family.\n\n"
    "She often told us about the winter when the snow was so deep that the road was closed for two weeks. The "
    "family lived on potatoes, apples from the cellar and the bread they baked themselves, and the children "
    "played cards by the stove.\n\n"
    "When I visit the farm now, the well is still there, although nobody uses it. I like to sit beside it and "
    "imagine the little girl who once carried the heavy buckets across the yard.",
    "This guide explains how to install the library and run your first program. The library needs Python 3.10 "
    "or newer, and it works on Linux, macOS and Windows.\n\n"
    "Install it with the package manager, then open a terminal and check that the installation succeeded by "
    "printing the version number. If the command cannot be found, make sure that the folder with your scripts is "
    "on the search path.\n\n"
    "To create your first project, write a short configuration file that names the input folder and the output "
    "folder, and start the program with that file. Progress is printed while the program runs, and a summary "
    "appears at the end. The next chapter describes every option of the configuration file in detail.",
]

ZH = [
    "这座古老的港口小镇位于一条大河的入海口。几百年来，镇上的生活一直围绕着每天清晨出海的渔船。码头边的房子被漆成鲜艳的颜色，"
    "据说是为了让水手们在海上就能认出自己的家。\n\n"
    "十九世纪，一条铁路通到了这里，第一批从首都来的游客也随之而来。人们在悬崖上修建了旅馆，又在海边铺了一条长长的步道，"
    "每到星期天下午，许多家庭都会在那里散步。\n\n"
    "如今港口安静了许多。一座小小的博物馆讲述着渔民的故事。每年夏天，镇上都会举办节日，街道上到处是音乐、烤沙丁鱼的香味，"
    "还有装饰着鲜花的小船。",
    "在家里做出好吃的面包，只需要面粉、水、盐和酵母，但是需要耐心。先把这些材料混合成粗糙的面团，静置半个小时，"
    "让面粉充分吸收水分，然后再开始揉面。\n\n"
    "揉大约十分钟，直到面团变得光滑，用手指按下去能够慢慢弹回来。把盆盖好，放在温暖的地方发酵，等面团长到原来的两倍大，"
    "这通常需要一到两个小时。\n\n"
    "轻轻地把面团整理成形，放在撒了面粉的烤盘上，送进预热好的烤箱。面包表皮变成深棕色、敲击底部发出空空的声音时，"
    "就说明烤好了。切开之前最好先让它冷却一会儿。",
    "大学的研究人员花了三年时间，研究城市里的蜜蜂是如何找到花朵的。他们给几百只蜜蜂装上了微型无线电标签，"
    "跟踪它们在公园、花园和阳台之间的飞行路线。\n\n"
    "研究结果让团队感到意外。市中心的蜜蜂飞行的距离比乡村的蜜蜂更短，因为城市里众多的小花园从春天到深秋"
    "都能持续提供各种不同的花。\n\n"
    "科学家们建议地方政府在街道两旁和屋顶上多种一些本地的花卉。他们说，即使只有几平方米的花坛，"
    "也能对蜂群的健康产生真正的影响。",
    "我的外婆在一个远离城镇的农场长大。每天上学之前，她都要先喂鸡，再从井里打水。到了傍晚，她还要帮妈妈给全家人准备晚饭。\n\n"
    "她常常给我们讲那年冬天的故事：雪下得太深，道路被封了整整两个星期。一家人靠土豆、地窖里的苹果和自己烤的面包过日子，"
    "孩子们就围在炉子旁边打牌。\n\n"
    "现在我回到农场的时候，那口井还在，只是已经没有人用了。我喜欢坐在井边，想象当年那个小女孩提着沉重的水桶穿过院子的样子。",
    "本指南介绍如何安装这个库并运行你的第一个程序。该库需要 Python 3.10 或更高版本，可以在 Linux、macOS 和 Windows 上使用。\n\n"
    "请使用包管理器进行安装，然后打开终端，输出版本号来确认安装是否成功。如果系统提示找不到命令，"
    "请检查存放脚本的文件夹是否已经加入了搜索路径。\n\n"
    "要创建第一个项目，请编写一个简短的配置文件，在其中指定输入文件夹和输出文件夹，然后用这个文件启动程序。"
    "程序运行时会显示进度，结束时会给出一份摘要。下一章将详细说明配置文件中的每一个选项。",
]

JA = [
    "この古い港町は大きな川の河口にあり、何百年ものあいだ、町の暮らしは夜明け前に出港する漁船を中心に回ってきました。"
    "岸壁に並ぶ家々は明るい色に塗られていますが、これは船乗りが海の上から自分の家を見分けられるようにするためだったと言われています。\n\n"
    "十九世紀になると鉄道が町まで延び、首都から最初の観光客がやって来ました。崖の上にはホテルが建てられ、"
    "海沿いには長い遊歩道が整備されて、日曜日の午後には多くの家族が散歩を楽しみました。\n\n"
    "現在の港はずっと静かです。小さな博物館では漁師たちの歴史が紹介されており、夏になると祭りが開かれて、"
    "通りは音楽とイワシを焼く香り、そして花で飾られた船でいっぱいになります。",
    "家でおいしいパンを焼くのに必要なのは、小麦粉と水と塩とイーストだけですが、時間と根気が要ります。"
    "まず材料を混ぜて粗い生地を作り、粉が水をよく吸うように三十分ほど休ませてから、こね始めます。\n\n"
    "生地がなめらかになり、指で押すとゆっくり戻るようになるまで、十分ほどこねてください。ボウルに覆いをして暖かい場所に置き、"
    "生地が二倍の大きさにふくらむまで待ちます。ふつうは一時間から二時間かかります。\n\n"
    "生地をやさしく丸めて、粉をふった天板にのせ、よく温めたオーブンで焼きます。表面が濃い茶色になり、"
    "底をたたくと軽い音がすれば焼き上がりです。切る前に少し冷ましておきましょう。",
    "大学の研究チームは三年をかけて、都会のミツバチがどのように花を見つけているのかを調べました。"
    "数百匹のハチに小さな無線タグを取り付け、公園や庭、ベランダのあいだを飛ぶ様子を追跡したのです。\n\n"
    "結果はチームにとって意外なものでした。都心のハチは郊外のハチよりも短い距離しか飛んでいませんでした。"
    "町の中にたくさんある小さな庭が、春から晩秋までさまざまな花を絶えず提供していたためです。\n\n"
    "研究者たちは、自治体が道路沿いや屋上に在来の花をもっと植えることを勧めています。"
    "わずか数平方メートルの花壇でも、群れの健康に大きな違いを生むことができるそうです。",
    "私の祖母は、町から遠く離れた農場で育ちました。毎朝学校へ行く前にニワトリにえさをやり、井戸から水を運びました。"
    "夕方になると、母親を手伝って家族全員の夕食を用意したそうです。\n\n"
    "祖母はよく、雪が深く積もって道が二週間も閉ざされた冬の話をしてくれました。家族はジャガイモと地下室のリンゴ、"
    "そして自分たちで焼いたパンで暮らし、子どもたちはストーブのそばでトランプをして遊んだといいます。\n\n"
    "今、農場を訪ねると、井戸はまだ残っていますが、もう誰も使っていません。私はその横に座って、"
    "重いバケツを運んで庭を横切っていた小さな女の子の姿を想像するのが好きです。",
    "このガイドでは、ライブラリのインストール方法と最初のプログラムの実行方法を説明します。"
    "ライブラリには Python 3.10 以降が必要で、Linux、macOS、Windows で動作します。\n\n"
    "パッケージマネージャーでインストールしたら、ターミナルを開いてバージョン番号を表示し、"
    "インストールが成功したことを確認してください。コマンドが見つからない場合は、スクリプトのあるフォルダーが"
    "検索パスに含まれているかどうかを確認します。\n\n"
    "最初のプロジェクトを作成するには、入力フォルダーと出力フォルダーを指定した短い設定ファイルを書き、"
    "そのファイルを指定してプログラムを起動します。実行中は進行状況が表示され、最後に概要が出力されます。"
    "次の章では、設定ファイルのすべてのオプションについて詳しく説明します。",
]

TH = [
    "เมืองท่าเก่าแก่แห่งนี้ตั้งอยู่ที่ปากแม่น้ำสายใหญ่ หลายร้อยปีมาแล้วที่ชีวิตของผู้คนในเมืองผูกพันอยู่กับเรือประมงที่ออกทะเลก่อนรุ่งสาง "
    "บ้านเรือนริมท่าเรือถูกทาด้วยสีสดใส เพื่อให้ชาวเรือมองเห็นและจำบ้านของตัวเองได้จากกลางทะเล\n\n"
    "ในศตวรรษที่สิบเก้า ทางรถไฟได้ตัดผ่านมาถึงเมือง และนักท่องเที่ยวกลุ่มแรกจากเมืองหลวงก็เริ่มเดินทางมา "
    "มีการสร้างโรงแรมบนหน้าผา และทำทางเดินเลียบชายทะเลยาวเหยียด ซึ่งครอบครัวต่าง ๆ มักมาเดินเล่นกันในบ่ายวันอาทิตย์\n\n"
    "ปัจจุบันท่าเรือเงียบสงบลงมาก พิพิธภัณฑ์เล็ก ๆ เล่าเรื่องราวของชาวประมง และทุกฤดูร้อนจะมีงานเทศกาล "
    "ถนนเต็มไปด้วยเสียงดนตรี กลิ่นปลาซาร์ดีนย่าง และเรือที่ประดับด้วยดอกไม้",
    "การทำขนมปังอร่อย ๆ ที่บ้านใช้เพียงแป้ง น้ำ เกลือ และยีสต์ แต่ต้องอาศัยความอดทน "
    "เริ่มจากผสมส่วนผสมทั้งหมดให้เป็นก้อนแป้งหยาบ ๆ แล้วพักไว้ประมาณครึ่งชั่วโมง เพื่อให้แป้งดูดซับน้ำก่อนนวด\n\n"
    "นวดแป้งประมาณสิบนาทีจนเนียนและเด้งกลับเมื่อกดด้วยนิ้ว ปิดชามแล้ววางไว้ในที่อุ่น "
    "รอจนแป้งขึ้นฟูเป็นสองเท่า ซึ่งโดยปกติจะใช้เวลาหนึ่งถึงสองชั่วโมง\n\n"
    "ค่อย ๆ ปั้นแป้งเป็นก้อน วางบนถาดที่โรยแป้งไว้ แล้วนำเข้าอบในเตาที่ร้อนจัด "
    "ขนมปังจะสุกเมื่อเปลือกเป็นสีน้ำตาลเข้มและเคาะก้นแล้วมีเสียงกลวง ควรปล่อยให้เย็นก่อนหั่น",
    "นักวิจัยของมหาวิทยาลัยใช้เวลาสามปีศึกษาว่าผึ้งในเมืองหาดอกไม้ได้อย่างไร "
    "พวกเขาติดป้ายวิทยุขนาดเล็กให้ผึ้งหลายร้อยตัว แล้วติดตามเส้นทางการบินระหว่างสวนสาธารณะ สวนหลังบ้าน และระเบียง\n\n"
    "ผลการศึกษาทำให้ทีมวิจัยประหลาดใจ ผึ้งในใจกลางเมืองบินเป็นระยะทางสั้นกว่าผึ้งในชนบท "
    "เพราะสวนเล็ก ๆ จำนวนมากในเมืองมีดอกไม้หลากหลายชนิดให้ตลอดตั้งแต่ฤดูใบไม้ผลิจนถึงปลายฤดูใบไม้ร่วง\n\n"
    "นักวิทยาศาสตร์แนะนำให้หน่วยงานท้องถิ่นปลูกดอกไม้พื้นเมืองริมถนนและบนหลังคาให้มากขึ้น "
    "พวกเขาบอกว่าแม้จะเป็นแปลงดอกไม้เพียงไม่กี่ตารางเมตร ก็สามารถช่วยให้รังผึ้งแข็งแรงขึ้นได้จริง",
    "ยายของฉันเติบโตมาในฟาร์มที่อยู่ห่างไกลจากตัวเมือง ทุกเช้าก่อนไปโรงเรียน ยายต้องให้อาหารไก่และหาบน้ำจากบ่อ "
    "พอตกเย็นก็ต้องช่วยแม่เตรียมอาหารเย็นให้คนทั้งบ้าน\n\n"
    "ยายมักเล่าให้พวกเราฟังถึงฤดูหนาวปีหนึ่งที่หิมะตกหนักจนถนนถูกปิดไปถึงสองสัปดาห์ "
    "ครอบครัวต้องกินมันฝรั่ง แอปเปิลจากห้องใต้ดิน และขนมปังที่อบเอง ส่วนเด็ก ๆ ก็นั่งเล่นไพ่กันข้างเตาผิง\n\n"
    "ทุกวันนี้เมื่อฉันไปเยี่ยมฟาร์ม บ่อน้ำยังคงอยู่ที่เดิม แม้จะไม่มีใครใช้แล้วก็ตาม "
    "ฉันชอบนั่งข้างบ่อและนึกภาพเด็กหญิงตัวเล็ก ๆ ที่เคยหิ้วถังน้ำหนัก ๆ เดินข้ามลานบ้าน",
    "คู่มือนี้อธิบายวิธีติดตั้งไลบรารีและเรียกใช้โปรแกรมแรกของคุณ ไลบรารีนี้ต้องใช้ Python 3.10 ขึ้นไป "
    "และทำงานได้บน Linux, macOS และ Windows\n\n"
    "ติดตั้งด้วยตัวจัดการแพ็กเกจ จากนั้นเปิดเทอร์มินัลแล้วแสดงหมายเลขเวอร์ชันเพื่อตรวจสอบว่าการติดตั้งสำเร็จ "
    "หากระบบแจ้งว่าไม่พบคำสั่ง ให้ตรวจสอบว่าโฟลเดอร์ที่เก็บสคริปต์อยู่ในเส้นทางค้นหาแล้วหรือยัง\n\n"
    "ในการสร้างโปรเจกต์แรก ให้เขียนไฟล์การตั้งค่าสั้น ๆ ที่ระบุโฟลเดอร์ข้อมูลเข้าและโฟลเดอร์ผลลัพธ์ "
    "แล้วเริ่มโปรแกรมด้วยไฟล์นั้น ระหว่างทำงานโปรแกรมจะแสดงความคืบหน้า และจะสรุปผลให้เมื่อเสร็จสิ้น "
    "บทถัดไปจะอธิบายตัวเลือกทุกตัวของไฟล์การตั้งค่าอย่างละเอียด",
]

CORPORA = {"en": EN, "zh": ZH, "ja": JA, "th": TH}

# one page of software documentation in each language (the same page): short entries full of set phrases
DOC_PAGES = {
    "en": """Configuration file

The configuration file lets you change how the program behaves. See the next section for the format of the configuration file.

input.paths
Sets the path of the input files. You can also give a folder. If omitted, the current folder is used. See the section "Input" for details.

output.dir
Sets the path of the output folder. The folder is created if it does not exist. See the section "Output" for details.

output.format
Sets the format of the output files. You can give jsonl or parquet. If omitted, jsonl is used.

engine.workers
Sets the number of processes that run at the same time. If you give 0, every core is used. See the section "Running" for details.

engine.kind
Sets where the program runs. You can give local or ray. If you give ray, you need to install Ray first.

minhash.bands
Sets the number of MinHash bands. A larger value finds more duplicates. If omitted, 14 is used.

minhash.rows
Sets the number of rows in each band. A larger value reduces false matches. If omitted, 8 is used.
""",
    "ja": """設定ファイル

設定ファイルには、プログラムの動作を変更するためのオプションを記述することができます。設定ファイルの形式については、次の節を参照してください。

input.paths
入力ファイルのパスを指定します。フォルダーを指定することもできます。省略した場合は、現在のフォルダーが使用されます。詳しくは「入力」の節を参照してください。

output.dir
出力フォルダーのパスを指定します。フォルダーが存在しない場合は、自動的に作成されます。詳しくは「出力」の節を参照してください。

output.format
出力ファイルの形式を指定します。jsonl または parquet を指定することができます。省略した場合は、jsonl が使用されます。

engine.workers
同時に実行するプロセスの数を指定します。0 を指定した場合は、すべてのコアが使用されます。詳しくは「実行」の節を参照してください。

engine.kind
実行環境を指定します。local または ray を指定することができます。ray を指定する場合は、事前に Ray をインストールする必要があります。

minhash.bands
MinHash のバンドの数を指定します。値を大きくすると、より多くの重複を検出することができます。省略した場合は、14 が使用されます。

minhash.rows
各バンドの行の数を指定します。値を大きくすると、誤検出を減らすことができます。省略した場合は、8 が使用されます。
""",
    "zh": """配置文件

配置文件用于修改程序的行为。关于配置文件的格式，请参阅下一节。

input.paths
指定输入文件的路径。也可以指定一个文件夹。如果省略，则使用当前文件夹。详细信息请参阅“输入”一节。

output.dir
指定输出文件夹的路径。如果文件夹不存在，将会自动创建。详细信息请参阅“输出”一节。

output.format
指定输出文件的格式。可以指定 jsonl 或 parquet。如果省略，则使用 jsonl。

engine.workers
指定同时运行的进程数。如果指定为 0，则使用所有核心。详细信息请参阅“运行”一节。

engine.kind
指定运行环境。可以指定 local 或 ray。如果指定 ray，需要事先安装 Ray。

minhash.bands
指定 MinHash 的分段数。值越大，能够检测到的重复越多。如果省略，则使用 14。

minhash.rows
指定每个分段的行数。值越大，误报越少。如果省略，则使用 8。
""",
    "th": """ไฟล์การตั้งค่า

ไฟล์การตั้งค่าใช้สำหรับเปลี่ยนการทำงานของโปรแกรม ดูรูปแบบของไฟล์การตั้งค่าได้ในหัวข้อถัดไป

input.paths
กำหนดเส้นทางของไฟล์ข้อมูลเข้า สามารถกำหนดเป็นโฟลเดอร์ก็ได้ หากไม่ระบุ จะใช้โฟลเดอร์ปัจจุบัน ดูรายละเอียดได้ในหัวข้อ "ข้อมูลเข้า"

output.dir
กำหนดเส้นทางของโฟลเดอร์ผลลัพธ์ หากยังไม่มีโฟลเดอร์นี้ ระบบจะสร้างให้โดยอัตโนมัติ ดูรายละเอียดได้ในหัวข้อ "ผลลัพธ์"

output.format
กำหนดรูปแบบของไฟล์ผลลัพธ์ สามารถกำหนดเป็น jsonl หรือ parquet หากไม่ระบุ จะใช้ jsonl

engine.workers
กำหนดจำนวนโพรเซสที่ทำงานพร้อมกัน หากกำหนดเป็น 0 จะใช้ทุกคอร์ ดูรายละเอียดได้ในหัวข้อ "การทำงาน"

engine.kind
กำหนดสภาพแวดล้อมที่ใช้ทำงาน สามารถกำหนดเป็น local หรือ ray หากกำหนดเป็น ray ต้องติดตั้ง Ray ก่อน

minhash.bands
กำหนดจำนวนแถบของ MinHash ค่าที่มากขึ้นจะตรวจพบข้อมูลซ้ำได้มากขึ้น หากไม่ระบุ จะใช้ 14

minhash.rows
กำหนดจำนวนแถวในแต่ละแถบ ค่าที่มากขึ้นจะลดการตรวจพบผิดพลาด หากไม่ระบุ จะใช้ 8
""",
}
